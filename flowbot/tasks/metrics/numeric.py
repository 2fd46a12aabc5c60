"""Numeric answers: parsing number strings, numeric equality, and the GSM8K metric.

GSM8K's official check compares the number after ``#### `` as a string once commas are removed;
here the comparison is numeric instead ("18.00" == "18"), within 1e-6 like AFlow's GSM8K benchmark.

>>> gsm8k_score("... so she has \\\\boxed{1,000} dollars", "She earns ... #### 1000")
1.0
>>> numeric_equal("$1,000.00", "1000")
True
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Union

from flowbot.scoring.extract import extract_number

__all__ = ["Number", "gsm8k_gold", "gsm8k_score", "numeric_equal", "parse_number"]

Number = Union[int, float, Fraction]

_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.I)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def parse_number(text: str | Number) -> Fraction | None:
    """Exact value of a number written alone: ``"1,000"``, ``"$1,000.50"``, ``"-3"``, ``"3.0"``,
    ``"1/2"``, ``"\\frac{1}{2}"``, ``"50%"`` (-> 50), ``"1e3"``. None when it is not just a number.

    >>> parse_number("$1,000.50"), parse_number("1/2"), parse_number("12 apples")
    (Fraction(2001, 2), Fraction(1, 2), None)
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, Fraction)):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(text) if math.isfinite(text) else None
    s = str(text).strip().replace("−", "-")
    s = _FRAC_RE.sub(r"\1/\2", s)
    s = re.sub(r"\\[,!;: ]|\\\$|[$€£\s]|\\%|%|^\\\(|\\\)$", "", s)  # "\$", "\%", "\,", "\(...\)"
    s = s.rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    negative = s.startswith("-") and "/" in s
    parts = s.lstrip("-").split("/") if negative else s.split("/")
    if len(parts) > 2 or not all(_NUMBER_RE.fullmatch(p) for p in parts):
        return None
    try:
        value = Fraction(parts[0])
        if len(parts) == 2:
            value /= Fraction(parts[1])
    except (ValueError, ZeroDivisionError):
        return None
    return -value if negative else value


def numeric_equal(a: str | Number, b: str | Number, rel_tol: float = 1e-6, abs_tol: float = 0.0) -> bool:
    """True when ``a`` and ``b`` parse (see :func:`parse_number`) to numbers that are equal, or
    close within ``rel_tol``/``abs_tol`` as in :func:`math.isclose`. False if either is not a number.
    """
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return x == y or math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=abs_tol)


def gsm8k_gold(answer: str | Number) -> str:
    """The final number of a GSM8K answer: what follows ``####`` (official format), else the text.

    >>> gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips ... #### 72")
    '72'
    """
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip().replace(",", "")


def gsm8k_score(pred: str | Number | None, gold: str | Number) -> float:
    """1.0 when the prediction's final number equals the gold number (within 1e-6), else 0.0.

    ``pred`` may be a number or a raw reply (its final number is taken with ``extract_number``).
    Raises ValueError when the gold itself is not a number.
    """
    gold_value = parse_number(gsm8k_gold(gold))
    if gold_value is None:
        raise ValueError(f"GSM8K gold answer {gold!r} is not a number")
    if pred is None:
        return 0.0
    value = parse_number(pred)
    if value is None and isinstance(pred, str):
        found = extract_number(pred)
        value = parse_number(found) if found is not None else None
    if value is None:
        return 0.0
    return float(abs(value - gold_value) <= Fraction(1, 10**6))
