"""pass@1 for code benchmarks (HumanEval, MBPP): run generated code against the example's unit tests
in the sandbox (:func:`flowbot.tools.sandbox.run_python`); it passes when the program ends cleanly.

    >>> import asyncio
    >>> r = asyncio.run(run_tests("def add(a, b):\\n    return a + b",
    ...                           "def check(candidate):\\n    assert candidate(1, 2) == 3", entry_point="add"))
    >>> r.passed
    True
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from flowbot.tools.sandbox import Isolation, SandboxResult, run_python


@dataclass
class TestRunResult:
    passed: bool
    error: str  # "" when passed; else the failing assertion / exception / limit, shortened


def default_test_call(test_code: str, entry_point: str | None) -> str | None:
    """The call that runs ``test_code``'s checks, or None when it runs on its own.

    HumanEval's ``def check(candidate)`` becomes ``check(<entry_point>)``; AFlow MBPP's
    ``def check()`` becomes ``check()``; plain assert lines need no call.
    """
    try:
        tree = ast.parse(test_code)
    except SyntaxError:
        return None  # the run itself reports the syntax error
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "check":
            n_args = len(node.args.posonlyargs) + len(node.args.args)
            if n_args == 0:
                return "check()"
            if entry_point:
                return f"check({entry_point})"
            raise ValueError("test_code defines check(candidate) but no entry_point was given")
    return None


async def run_tests(
    code: str,
    test_code: str,
    *,
    entry_point: str | None = None,
    call: str | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    isolation: Isolation = "auto",
) -> TestRunResult:
    """Run ``code`` then ``test_code`` then ``call`` in one sandboxed program; pass iff it ends cleanly.

    ``call`` defaults to :func:`default_test_call`. The code runs with ``__name__`` set to
    ``"__sandbox__"`` so ``if __name__ == "__main__":`` demo blocks in generated code stay inert,
    and a program that calls ``exit()`` before the checks finish fails.
    """
    if call is None:
        call = default_test_call(test_code, entry_point)
    program = f"{code}\n\n{test_code}\n"
    if call:
        program += f"\n{call}\n"
    res = await run_python(program, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation,
                           run_name="__sandbox__")
    if res.ok:
        return TestRunResult(True, "")
    return TestRunResult(False, _failure_text(res))


def _failure_text(res: SandboxResult, limit: int = 600) -> str:
    if res.timed_out:
        return "timed out"
    if res.killed_reason:
        return f"stopped: {res.killed_reason}"
    tail = res.stderr.strip()
    if res.exit_code == 0 and not res.completed:
        return "the program exited before the tests finished"
    if not tail:
        return f"exit code {res.exit_code}"
    lines = tail.splitlines()
    # the innermost frame in the program (with its source line) and the exception line
    at = [i for i, ln in enumerate(lines) if ln.strip().startswith('File "main.py"')]
    picked = lines[at[-1]:at[-1] + 2] if at else []
    if lines[-1] not in picked:
        picked.append(lines[-1])
    return "\n".join(ln.strip() for ln in picked)[-limit:]
