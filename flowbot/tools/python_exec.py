"""The ``python`` tool: run LLM-written code in the sandbox and return what it printed."""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from flowbot.tools.base import Tool, ToolError, ToolResult
from flowbot.tools.sandbox import Isolation, SandboxResult, run_python

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.S | re.M)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}
_RESULT_VAR = "__flowbot_result__"


def strip_code_fences(text: str) -> str:
    """The Python code in an LLM reply: the bodies of its Python (or untagged) fenced blocks,
    joined, or the text itself when it has no fence. An unclosed fence (a cut-off reply) counts.

    >>> strip_code_fences("Here:\\n```python\\nprint(1)\\n```\\nDone.")
    'print(1)'
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    if not blocks:
        stripped = text.strip()
        if len(stripped) > 1 and stripped[0] == stripped[-1] == "`":  # `code` or ```code```
            return stripped.strip("`")
        return text.strip("\n")
    code = [textwrap.dedent(body).strip("\n") for tag, body in blocks if tag in _PYTHON_TAGS]
    return "\n\n".join(code)


def print_last_expression(code: str) -> str:
    """Make a trailing bare expression print its repr (unless None), as a notebook cell would.

    LLMs often end with ``answer`` instead of ``print(answer)``; this keeps that from printing
    nothing. Code that does not parse is returned unchanged (the run reports the error).
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    if isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name) and last.value.func.id == "print":
        return code
    lines = code.splitlines(keepends=True)
    start = sum(len(ln) for ln in lines[: last.lineno - 1]) + _char_offset(lines[last.lineno - 1], last.col_offset)
    end_line = lines[last.end_lineno - 1]  # type: ignore[operator]
    end = sum(len(ln) for ln in lines[: last.end_lineno - 1]) + _char_offset(end_line, last.end_col_offset)  # type: ignore[operator]
    before, expr, after = code[:start], code[start:end], code[end:]
    return (f"{before}{_RESULT_VAR} = ({expr}){after.rstrip()}\n"
            f"if {_RESULT_VAR} is not None:\n    print(repr({_RESULT_VAR}))\n")


def last_printed_line(stdout: str) -> str:
    """The answer a program printed: its last non-empty line, stripped (a quoted string literal, as
    a trailing bare expression prints it, loses its quotes).

    >>> last_printed_line("Total:\\n 18 \\n\\n"), last_printed_line("'Paris'\\n")
    ('18', 'Paris')
    """
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if len(last) >= 2 and last[0] == last[-1] and last[0] in "'\"":
        try:
            value = ast.literal_eval(last)
        except (ValueError, SyntaxError):
            return last
        if isinstance(value, str):
            return value.strip()
    return last


def _char_offset(line: str, byte_offset: int | None) -> int:
    # ast column offsets count UTF-8 bytes
    return len(line.encode("utf-8")[: byte_offset or 0].decode("utf-8", "ignore"))


class PythonTool(Tool):
    """Runs a Python program in the sandbox; the output is what it printed.

    >>> import asyncio
    >>> res = asyncio.run(PythonTool().call(code="```python\\nx = 6 * 7\\nx\\n```"))
    >>> res.output
    '42\\n'
    """

    name = "python"
    description = ("Run a Python 3 program (standard library and installed packages such as sympy; "
                   "no network, no files outside its folder) and return what it prints. "
                   "Use print() to show results.")
    primary_arg = "code"
    extra_args = ("stdin",)

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 512,
                 max_output_bytes: int = 16_000, stderr_tail_chars: int = 1_500,
                 print_last_expr: bool = True, isolation: Isolation = "auto") -> None:
        if timeout_s <= 0 or memory_mb <= 0 or max_output_bytes <= 0:
            raise ValueError("python tool: timeout_s, memory_mb and max_output_bytes must be > 0")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_output_bytes = max_output_bytes
        self.stderr_tail_chars = stderr_tail_chars
        self.print_last_expr = print_last_expr
        self.isolation: Isolation = isolation

    async def call(self, **kwargs: Any) -> ToolResult:
        """Run ``code`` (optional ``stdin``). With ``answer_only=True`` (set in a tool node's params
        ``config``) the program is an answer printer: the output is its last printed line, stripped,
        and any failure, including an empty program, is an output starting with ``Error:`` and
        ``ok=False`` rather than an exception, so a workflow can branch on it."""
        unknown = set(kwargs) - {"code", "stdin", "answer_only"}
        if unknown:
            raise ToolError(f"python tool: unknown argument(s) {sorted(unknown)}; "
                            "expected 'code' and optional 'stdin', 'answer_only'")
        code = kwargs.get("code")
        stdin = kwargs.get("stdin", "") or ""
        answer_only = bool(kwargs.get("answer_only", False))
        if not isinstance(code, str):
            raise ToolError(f"python tool: 'code' must be a string, got {type(code).__name__}")
        if not isinstance(stdin, str):
            raise ToolError(f"python tool: 'stdin' must be a string, got {type(stdin).__name__}")
        program = strip_code_fences(code)
        if not program.strip():
            if answer_only:
                return ToolResult("Error: no code to run", ok=False, details={"exit_code": None})
            raise ToolError("python tool: no code to run")
        if self.print_last_expr:
            program = print_last_expression(program)
        res = await run_python(program, stdin=stdin, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                               max_output_bytes=self.max_output_bytes, isolation=self.isolation)
        return self._result(res, answer_only)

    def _result(self, res: SandboxResult, answer_only: bool = False) -> ToolResult:
        details = {
            "exit_code": res.exit_code, "stderr": res.stderr, "timed_out": res.timed_out,
            "killed_reason": res.killed_reason, "truncated": res.truncated,
            "duration_s": round(res.duration_s, 3), "isolation": res.isolation,
        }
        ok = res.exit_code == 0 and res.killed_reason is None
        if ok:
            return ToolResult(last_printed_line(res.stdout) if answer_only else res.stdout, ok=True, details=details)
        if res.timed_out:
            spent = "its CPU time" if res.killed_reason == "cpu_limit" else f"{self.timeout_s:g} s"
            problem = f"Error: timed out after {spent}"
        elif res.killed_reason == "output_limit":
            problem = f"Error: output passed {self.max_output_bytes} bytes; the run was stopped"
        else:
            tail = res.stderr.strip()[-self.stderr_tail_chars:]
            problem = "Error:\n" + (tail or f"exit code {res.exit_code}")
        if answer_only:  # what it printed before failing is not an answer
            return ToolResult(problem, ok=False, details=details)
        output = (res.stdout.rstrip("\n") + "\n" if res.stdout.strip() else "") + problem
        return ToolResult(output, ok=False, details=details)
