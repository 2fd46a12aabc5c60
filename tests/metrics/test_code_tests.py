"""pass@1 checks on real HumanEval and MBPP rows (AFlow format) from the shared datasets."""

from __future__ import annotations

import pytest

from flowbot.tasks.metrics.code_tests import default_test_call, run_tests

from .metrics_data import read_jsonl


@pytest.fixture(scope="module")
def humaneval_row() -> dict:
    return read_jsonl("humaneval/aflow/humaneval_validate.jsonl")[0]


@pytest.fixture(scope="module")
def mbpp_row() -> dict:
    rows = read_jsonl("mbpp/aflow/mbpp_validate.jsonl")
    return next(r for r in rows if r["test_imports"])  # also exercises the test imports


async def test_humaneval_canonical_passes_and_broken_fails(humaneval_row: dict) -> None:
    row = humaneval_row
    assert default_test_call(row["test"], row["entry_point"]) == f"check({row['entry_point']})"
    good = await run_tests(row["prompt"] + row["canonical_solution"], row["test"], entry_point=row["entry_point"])
    assert good.passed and good.error == ""
    broken = row["prompt"] + "    return None\n"
    bad = await run_tests(broken, row["test"], entry_point=row["entry_point"])
    assert not bad.passed and "AssertionError" in bad.error and "assert candidate" in bad.error


async def test_mbpp_canonical_passes_and_broken_fails(mbpp_row: dict) -> None:
    row = mbpp_row
    tests = "\n".join(row["test_imports"]) + "\n" + row["test"]
    assert default_test_call(tests, row["entry_point"]) == "check()"
    good = await run_tests(row["code"], tests, entry_point=row["entry_point"])
    assert good.passed, good.error
    broken = f"def {row['entry_point']}(*args):\n    return 0\n"
    bad = await run_tests(broken, tests, entry_point=row["entry_point"])
    assert not bad.passed and "AssertionError" in bad.error
    # the plain assert list runs without any call
    listed = "\n".join(row["test_imports"] + row["test_list"])
    assert default_test_call(listed, row["entry_point"]) is None
    assert (await run_tests(row["code"], listed)).passed
    assert not (await run_tests(broken, listed)).passed


async def test_early_exit_and_hangs_fail_but_main_blocks_stay_inert(humaneval_row: dict) -> None:
    row = humaneval_row
    solution = row["prompt"] + row["canonical_solution"]
    exits = await run_tests("import sys\nsys.exit(0)\n" + solution, row["test"], entry_point=row["entry_point"])
    assert not exits.passed and "exited before the tests finished" in exits.error
    demo = solution + "\nif __name__ == '__main__':\n    print(input())\n"  # would hit EOF on stdin
    assert (await run_tests(demo, row["test"], entry_point=row["entry_point"])).passed
    hang = row["prompt"] + "    while True:\n        pass\n"
    slow = await run_tests(hang, row["test"], entry_point=row["entry_point"], timeout_s=1)
    assert not slow.passed and slow.error == "timed out"


async def test_explicit_call_and_syntax_errors() -> None:
    code = "def double(x):\n    return 2 * x\n"
    assert (await run_tests(code, "", call="assert double(4) == 8")).passed
    failed = await run_tests(code, "", call="assert double(4) == 9")
    assert not failed.passed and "AssertionError" in failed.error
    broken = await run_tests("def double(x)\n    return x", "assert double(1) == 2")
    assert not broken.passed and "SyntaxError" in broken.error


def test_check_with_a_candidate_needs_an_entry_point() -> None:
    with pytest.raises(ValueError, match="entry_point"):
        default_test_call("def check(candidate):\n    assert candidate(1)\n", None)
