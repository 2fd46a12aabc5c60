"""How a field value reads as text: in prompts, in metric feedback, in the LLM judge and in reports.

    >>> format_value(["red", "green"])
    '1. red\\n2. green'
    >>> format_value([["Paris", ["Paris is the capital of France."]]])
    'Paris: Paris is the capital of France.'
"""

from __future__ import annotations

import json
from typing import Any


def format_value(value: Any) -> str:
    """Render a field value as text: strings as is, passages and lists readably, the rest as JSON."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    if isinstance(value, list):
        if value and all(_is_titled_passage(v) for v in value):
            return "\n\n".join(f"{v[0]}: {' '.join(v[1]) if isinstance(v[1], list) else v[1]}" for v in value)
        if value and all(isinstance(v, dict) and "text" in v for v in value):
            return "\n\n".join((f"{v['title']}: " if v.get("title") else "") + str(v["text"]) for v in value)
        if all(isinstance(v, (str, int, float)) for v in value):
            return "\n".join(f"{i}. {v}" for i, v in enumerate(value, 1))
    return json.dumps(value, ensure_ascii=False, indent=1)


def _is_titled_passage(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], (list, str))
