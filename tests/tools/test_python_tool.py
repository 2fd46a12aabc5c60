"""The ``python`` tool: fences stripped, output returned, errors reported with a stderr tail."""

from __future__ import annotations

import signal

import pytest

from flowbot.tools import PythonTool, ToolError
from flowbot.tools.python_exec import last_printed_line, print_last_expression, strip_code_fences


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("print(1)", "print(1)"),
        ("```python\nx = 1\nprint(x)\n```", "x = 1\nprint(x)"),
        ("Sure:\n```py\na = 1\n```\nthen\n```\nprint(a)\n```\nOutput:\n```text\n1\n```", "a = 1\n\nprint(a)"),
        ("```python\nprint(2)", "print(2)"),  # a reply cut off before the closing fence
        ("```print(3)```", "print(3)"),
        ("  ```python\n  def f():\n      return 1\n  ```", "def f():\n    return 1"),
    ],
)
def test_strip_code_fences(reply: str, code: str) -> None:
    assert strip_code_fences(reply) == code


def test_print_last_expression_only_touches_a_trailing_expression() -> None:
    assert print_last_expression("import os") == "import os"
    assert print_last_expression("print(1)") == "print(1)"
    assert print_last_expression("x = (") == "x = ("  # unparsable: left for the run to report
    rewritten = print_last_expression("a = 1; a + 1  # note")
    assert rewritten.startswith("a = 1; __flowbot_result__ = (a + 1)  # note\n")


async def test_runs_fenced_code_and_prints_the_last_expression() -> None:
    tool = PythonTool(timeout_s=5)
    res = await tool.call(code="```python\nx = 6 * 7\nx\n```")
    assert res.ok and res.output == "42\n" and res.details["exit_code"] == 0
    res = await tool.call(code="import sys\nprint(sys.stdin.read()[::-1])", stdin="abc")
    assert res.output == "cba\n"
    res = await tool.call(code="def f():\n    return None\nf()")
    assert res.ok and res.output == ""


async def test_errors_come_back_with_the_stderr_tail() -> None:
    tool = PythonTool(timeout_s=5)
    res = await tool.call(code="print('partial')\n1 / 0")
    assert not res.ok and res.output.startswith("partial\nError:")
    assert "ZeroDivisionError" in res.output and res.details["exit_code"] == 1
    assert "ZeroDivisionError" in res.details["stderr"]


async def test_timeouts_are_reported_not_raised() -> None:
    res = await PythonTool(timeout_s=1).call(code="while True:\n    pass")
    assert not res.ok and "timed out" in res.output and res.details["timed_out"]


async def test_bad_arguments_raise_tool_error() -> None:
    tool = PythonTool()
    with pytest.raises(ToolError, match="'code' must be a string"):
        await tool.call(code=None)
    with pytest.raises(ToolError, match="unknown argument"):
        await tool.call(code="print(1)", language="js")
    with pytest.raises(ToolError, match="no code"):
        await tool.call(code="```text\nnot python\n```")
    with pytest.raises(ValueError):
        PythonTool(timeout_s=0)


@pytest.mark.parametrize(
    ("stdout", "answer"),
    [("18\n", "18"), ("Total:\n  18  \n\n", "18"), ("'Denver Broncos'\n", "Denver Broncos"),
     ("\"it's\"\n", "it's"), ("'a' + 'b'\n", "'a' + 'b'"), ("", ""), ("\n \n", "")],
)
def test_last_printed_line(stdout: str, answer: str) -> None:
    assert last_printed_line(stdout) == answer


def test_a_run_ended_by_its_cpu_limit_reads_as_timed_out() -> None:
    """The CPU limit is the timeout's kernel backstop: a run it ends (the supervisor starved of CPU,
    or code burning several cores) has used up its time, and says so."""
    from flowbot.tools.sandbox import SandboxResult, _limit_reason, ran_out_of_time

    reason = _limit_reason(-signal.SIGXCPU, "")
    assert reason == "cpu_limit" and ran_out_of_time(reason)
    ended = SandboxResult(stdout="partial\n", stderr="", exit_code=-signal.SIGXCPU, timed_out=ran_out_of_time(reason),
                          killed_reason=reason, truncated=False, duration_s=2.0)
    res = PythonTool(timeout_s=2)._result(ended, answer_only=True)
    assert not res.ok and res.output == "Error: timed out after its CPU time"
    assert res.details["killed_reason"] == "cpu_limit" and res.details["timed_out"] is True


async def test_answer_only_returns_the_printed_answer_or_an_error_text() -> None:
    """A program-of-thought step reads one answer line; every failure is text starting with "Error"
    (never an exception), so a rule branch can send the example to a fallback."""
    tool = PythonTool(timeout_s=5)
    res = await tool.call(code="print('the total is')\nprint(3 + 4)", answer_only=True)
    assert res.ok and res.output == "7"
    res = await tool.call(code="```python\nteam = 'Denver Broncos'\nteam\n```", answer_only=True)
    assert res.ok and res.output == "Denver Broncos"
    res = await tool.call(code="print('Error is not here')\n1 / 0", answer_only=True)
    assert not res.ok and res.output.startswith("Error:\n") and "ZeroDivisionError" in res.output
    assert "not here" not in res.output  # what it printed before failing is not an answer
    res = await tool.call(code="```text\nnot python\n```", answer_only=True)
    assert not res.ok and res.output == "Error: no code to run"
    res = await tool.call(code="x = 7", answer_only=True)
    assert res.ok and res.output == ""
    res = await PythonTool(timeout_s=1).call(code="while True:\n    pass", answer_only=True)
    assert not res.ok and res.output.startswith("Error: timed out")
