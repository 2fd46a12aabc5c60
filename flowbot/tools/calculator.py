"""The ``calculator`` tool: safe arithmetic on a parsed expression tree (nothing is ``eval``'d).

Integers and decimals are exact (``fractions.Fraction``) under ``+ - * / // % **``, so
``0.1 + 0.2`` is ``0.3`` and ``1/3*3`` is ``1``; functions such as ``sqrt`` and ``log`` work in
floating point. Results that would be huge are refused before they are computed.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction
from typing import Any, Callable, Union

from flowbot.tools.base import Tool, ToolError, ToolResult

Number = Union[Fraction, float]

MAX_EXPRESSION_CHARS = 2_000
MAX_BITS = 14_000  # largest exact number allowed, in bits (~4,200 digits: under Python's str limit)
MAX_FACTORIAL = 1_000

_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\d])")
_REPLACEMENTS = {"^": "**", "×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "√": "sqrt",
                 "$": "", "€": "", "£": ""}
_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e, "tau": math.tau}


class CalcError(ValueError):
    """The expression is not allowed, malformed, or its result is out of range."""


def _to_float(x: Number) -> float:
    try:
        return float(x)
    except OverflowError:
        raise CalcError("number too large for a floating-point function") from None


def _to_int(x: Number, what: str) -> int:
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise CalcError(f"{what} needs a whole number, got {format_number(x)}")


def _check_size(x: Number) -> Number:
    if isinstance(x, Fraction) and max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_BITS:
        raise CalcError("result too large")
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        raise CalcError("result is not a finite number")
    return x


def _bits(x: Number) -> float:
    """log2 of the larger part of an exact number (0 for floats, which cannot grow unbounded)."""
    if isinstance(x, Fraction):
        return max(math.log2(abs(x.numerator) or 1), math.log2(x.denominator))
    return 0.0


def _power(base: Number, exp: Number) -> Number:
    if isinstance(exp, Fraction) and exp.denominator == 1 and isinstance(base, Fraction):
        n = exp.numerator
        if base not in (0, 1, -1) and abs(n) * _bits(base) > MAX_BITS:
            raise CalcError("result too large")
        if base == 0 and n < 0:
            raise CalcError("division by zero")
        return base**n
    b, x = _to_float(base), _to_float(exp)
    if b < 0 and not x.is_integer():
        raise CalcError("fractional power of a negative number")
    if b == 0 and x < 0:
        raise CalcError("division by zero")
    try:
        return math.pow(b, x)
    except OverflowError:
        raise CalcError("result too large") from None


def _factorial(x: Number) -> Number:
    n = _to_int(x, "factorial")
    if n < 0 or n > MAX_FACTORIAL:
        raise CalcError(f"factorial needs 0 <= n <= {MAX_FACTORIAL}")
    return Fraction(math.factorial(n))


def _comb_perm(fn: Callable[[int, int], int]) -> Callable[..., Number]:
    def run(n: Number, k: Number) -> Number:
        ni, ki = _to_int(n, fn.__name__), _to_int(k, fn.__name__)
        if ni < 0 or ki < 0 or ni > 20_000:
            raise CalcError(f"{fn.__name__} needs 0 <= k and 0 <= n <= 20000")
        return Fraction(fn(ni, ki))
    return run


def _round(x: Number, digits: Number = Fraction(0)) -> Number:
    d = _to_int(digits, "round")
    if isinstance(x, Fraction):
        return Fraction(round(x, d))
    return round(x, d)


def _log(x: Number, base: Number | None = None) -> Number:
    v = _to_float(x)
    if v <= 0:
        raise CalcError("log of a non-positive number")
    if base is None:
        return math.log(v)
    b = _to_float(base)
    if b <= 0 or b == 1:
        raise CalcError("log base must be positive and not 1")
    return math.log(v, b)


def _float_fn(fn: Callable[[float], float]) -> Callable[[Number], Number]:
    def run(x: Number) -> Number:
        try:
            return fn(_to_float(x))
        except (ValueError, OverflowError) as exc:
            raise CalcError(f"{fn.__name__}: {exc}") from None
    return run


def _int_fn(fn: Callable[[Any], int]) -> Callable[[Number], Number]:
    def run(x: Number) -> Number:
        return Fraction(fn(x))  # exact on fractions; floats are checked finite already
    return run


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalcError("square root of a negative number")
    if isinstance(x, Fraction):  # exact when both parts are perfect squares
        rn, rd = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if rn * rn == x.numerator and rd * rd == x.denominator:
            return Fraction(rn, rd)
    return math.sqrt(_to_float(x))


def _gcd_lcm(fn: Callable[..., int]) -> Callable[..., Number]:
    def run(*args: Number) -> Number:
        return Fraction(fn(*(_to_int(a, fn.__name__) for a in args)))
    return run


_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {  # name: (fn, min args, max args)
    "sqrt": (_sqrt, 1, 1),
    "cbrt": (_float_fn(lambda v: math.copysign(abs(v) ** (1 / 3), v)), 1, 1),
    "log": (_log, 1, 2), "ln": (_log, 1, 1),
    "log10": (lambda x: _log(x, Fraction(10)), 1, 1), "log2": (lambda x: _log(x, Fraction(2)), 1, 1),
    "exp": (_float_fn(math.exp), 1, 1),
    "sin": (_float_fn(math.sin), 1, 1), "cos": (_float_fn(math.cos), 1, 1),
    "tan": (_float_fn(math.tan), 1, 1), "asin": (_float_fn(math.asin), 1, 1),
    "acos": (_float_fn(math.acos), 1, 1), "atan": (_float_fn(math.atan), 1, 1),
    "degrees": (_float_fn(math.degrees), 1, 1), "radians": (_float_fn(math.radians), 1, 1),
    "abs": (abs, 1, 1), "round": (_round, 1, 2),
    "floor": (_int_fn(math.floor), 1, 1), "ceil": (_int_fn(math.ceil), 1, 1),
    "factorial": (_factorial, 1, 1),
    "comb": (_comb_perm(math.comb), 2, 2), "perm": (_comb_perm(math.perm), 2, 2),
    "gcd": (_gcd_lcm(math.gcd), 1, 16), "lcm": (_gcd_lcm(math.lcm), 1, 16),
    "min": (min, 1, 64), "max": (max, 1, 64),
}


def _binop(op: ast.operator, a: Number, b: Number) -> Number:
    if isinstance(op, ast.Pow):
        return _power(a, b)
    if isinstance(op, ast.Mult) and _bits(a) + _bits(b) > MAX_BITS:
        raise CalcError("result too large")
    try:
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.FloorDiv):
            q = a // b
            return Fraction(q) if isinstance(q, int) else q
        if isinstance(op, ast.Mod):
            return a % b
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("result too large") from None
    raise CalcError(f"operator {type(op).__name__} is not allowed")


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CalcError(f"only numbers are allowed, got {v!r}")
        return Fraction(v) if isinstance(v, int) else v
    if isinstance(node, ast.BinOp):
        return _check_size(_binop(node.op, _eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalcError(f"unknown name {node.id!r} (constants: {', '.join(_CONSTANTS)})")
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalcError(f"{type(node).__name__} is not allowed in a calculator expression")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        raise CalcError(f"unknown function {name!r} (known: {', '.join(sorted(_FUNCTIONS))})")
    if node.keywords:
        raise CalcError("keyword arguments are not allowed")
    fn, lo, hi = _FUNCTIONS[node.func.id]
    if not lo <= len(node.args) <= hi:
        raise CalcError(f"{node.func.id} takes {lo}{'' if lo == hi else f' to {hi}'} argument(s)")
    args = [_eval(a) for a in node.args]
    return _check_size(fn(*args))


def _decimal_literals(expr: str) -> str:
    """Rewrite decimal literals as exact fractions: ``0.1`` -> ``(1/10)``."""
    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        if "e" in text.lower():
            return text  # scientific notation stays a float
        f = Fraction(text)
        return f"({f.numerator}/{f.denominator})" if f.denominator != 1 else str(f.numerator)
    return re.sub(r"(?<![\w.])(\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.])", repl, expr)


def normalize_expression(expression: str) -> str:
    """Calculator spelling to Python spelling: ``1,000`` -> ``1000``, ``^`` -> ``**``, ``×`` -> ``*``."""
    expr = expression.strip().rstrip("=").strip()
    for old, new in _REPLACEMENTS.items():
        expr = expr.replace(old, new)
    expr = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), expr)
    expr = re.sub(r"(?<=\d)_(?=\d)", "", expr)
    return expr


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; raises :class:`CalcError` on anything else.

    >>> evaluate("2 * (3 + 4) ^ 2")
    Fraction(98, 1)
    """
    if not isinstance(expression, str):
        raise CalcError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    expr = normalize_expression(expression)
    if not expr:
        raise CalcError("empty expression")
    try:
        tree = ast.parse(_decimal_literals(expr), mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"cannot parse {expression!r}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalcError(f"cannot parse {expression!r}") from None
    try:
        return _eval(tree)
    except RecursionError:
        raise CalcError("expression nested too deeply") from None


def format_number(x: Number, digits: int = 12) -> str:
    """A number as plain text: whole numbers without ``.0``, others to ``digits`` significant digits."""
    if isinstance(x, Fraction):
        if x.denominator == 1:
            return str(x.numerator)
        x = _to_float(x)
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    text = format(x, f".{digits}g")
    return "0" if text in ("-0", "0") else text


def calculate(expression: str) -> str:
    """Evaluate and format: ``calculate("1,000 * 1.5") == "1500"``."""
    return format_number(evaluate(expression))


class CalculatorTool(Tool):
    """Evaluates arithmetic safely.

    >>> import asyncio
    >>> asyncio.run(CalculatorTool().call(expression="sqrt(16) + 2^3")).output
    '12'
    """

    name = "calculator"
    description = ("Evaluate an arithmetic expression: + - * / // % ** (or ^), parentheses, "
                   "sqrt, log, ln, exp, sin, cos, tan, abs, round, floor, ceil, factorial, "
                   "comb, gcd, lcm, min, max, pi, e.")
    primary_arg = "expression"

    async def call(self, **kwargs: Any) -> ToolResult:
        unknown = set(kwargs) - {"expression"}
        if unknown or "expression" not in kwargs:
            raise ToolError(f"calculator: expected one argument 'expression', got {sorted(kwargs)}")
        expression = kwargs["expression"]
        if isinstance(expression, (int, float)) and not isinstance(expression, bool):
            expression = str(expression)
        try:
            value = evaluate(expression)
        except CalcError as exc:
            raise ToolError(f"calculator: {exc}") from None
        return ToolResult(format_number(value), details={"expression": normalize_expression(expression)})

