"""The ``calculator`` tool: exact arithmetic, common functions, and refusals."""

from __future__ import annotations

import math

import pytest

from flowbot.tools import CalculatorTool, ToolError
from flowbot.tools.calculator import CalcError, calculate, evaluate, format_number


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("6 / 3", "2"),
        ("0.1 + 0.2", "0.3"),  # exact decimals
        ("1/3*3", "1"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("10 % 3", "1"),
        ("5.5 % 2", "1.5"),
        ("2 ** 10", "1024"),
        ("2^10", "1024"),
        ("-3 ** 2", "-9"),
        ("(-2) ** 3", "-8"),
        ("--4", "4"),
        ("1,000 * 1.5", "1500"),
        ("$1,234.50 + 0.50", "1235"),
        ("3 × 4 ÷ 2", "6"),
        ("sqrt(16)", "4"),
        ("sqrt(2)", "1.41421356237"),
        ("4 ** 0.5", "2"),
        ("log(100, 10)", "2"),
        ("ln(e)", "1"),
        ("log10(1000)", "3"),
        ("exp(0)", "1"),
        ("sin(pi / 2)", "1"),
        ("cos(0)", "1"),
        ("abs(-3.5)", "3.5"),
        ("round(3.14159, 2)", "3.14"),
        ("round(2.5)", "2"),
        ("floor(-2.5)", "-3"),
        ("ceil(2.1)", "3"),
        ("factorial(10)", "3628800"),
        ("comb(5, 2)", "10"),
        ("max(1, 7, 3)", "7"),
        ("gcd(12, 18)", "6"),
        ("100 / 7", "14.2857142857"),
        ("2.5e-3", "0.0025"),
        ("2 ** 100", str(2**100)),
        ("12 * 3 =", "36"),
    ],
)
def test_evaluates(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "too large"),
        ("10**10**10", "too large"),
        ("2 ** -100000", "too large"),
        ("factorial(100000)", "factorial"),
        ("2**14000 * 2**14000", "too large"),
        ("1e308 * 10", "finite"),
        ("exp(1000)", "exp"),
        ("1 / 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-1)", "negative"),
        ("log(0)", "non-positive"),
        ("(-8) ** (1/3)", "negative"),
        ("__import__('os').system('echo hi')", "unknown function"),
        ("open('/etc/passwd')", "unknown function"),
        ("(1).real", "Attribute"),
        ("x + 1", "unknown name"),
        ("[1, 2]", "List"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("lambda: 1", "Lambda"),
        ("1 if 1 else 2", "IfExp"),
        ("round(1.5, 0.5)", "whole number"),
        ("sqrt(1, 2)", "argument"),
        ("1 +", "cannot parse"),
        ("", "empty"),
        ("1" * 3000, "longer than"),
    ],
)
def test_rejects(expression: str, message: str) -> None:
    with pytest.raises(CalcError, match=message):
        evaluate(expression)


def test_format_number() -> None:
    assert format_number(3.0) == "3"
    assert format_number(-0.0) == "0"
    assert format_number(1e20) == "1e+20"
    assert format_number(math.pi) == "3.14159265359"


async def test_tool_call_and_errors() -> None:
    tool = CalculatorTool()
    res = await tool.call(expression="sqrt(16) + 2^3")
    assert res.ok and res.output == "12"
    assert (await tool.call(expression=41)).output == "41"
    with pytest.raises(ToolError, match="division by zero"):
        await tool.call(expression="1/0")
    with pytest.raises(ToolError, match="expected one argument"):
        await tool.call(expr="1+1")
