"""Calling a metric safely: whatever a metric returns becomes a :class:`MetricResult`.

A metric is any callable ``metric(example, prediction)`` (sync or async) returning a number, a
bool (0/1), a ``(score, feedback)`` tuple, a :class:`MetricResult`, or any object with ``score``
and optional ``feedback`` attributes; a score is a finite number in [0, 1]. A metric that raises or
returns anything else scores that example 0 and the error is recorded (a metric failing on most
examples is caught by :mod:`flowbot.runtime.metric_guard`). An LM failure that is not the
example's fault (a permanent error, a used-up budget, e.g. in an LLM judge) propagates.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from flowbot.lm.base import BudgetExceeded, LMPermanentError

Metric = Callable[[dict[str, Any], dict[str, Any]], Union[Any, Awaitable[Any]]]


@dataclass
class MetricResult:
    score: float
    feedback: str = ""
    error: str | None = None  # set when the metric itself failed

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"score": self.score}
        if self.feedback:
            d["feedback"] = self.feedback
        if self.error:
            d["error"] = self.error
        return d


def _as_score(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        score = float(value)
        if math.isnan(score):
            raise ValueError("metric returned NaN")
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"metric returned {score!r}; a score must be between 0 and 1")
        return score
    raise TypeError(f"metric returned {type(value).__name__} {value!r}, expected a number or bool")


def normalize_metric_output(value: Any) -> MetricResult:
    """Turn any supported metric return value into a MetricResult (raises on unsupported ones)."""
    if isinstance(value, MetricResult):
        _as_score(value.score)  # the same rule for metrics that build their own result
        return value
    if isinstance(value, tuple) and len(value) == 2:
        score, feedback = value
        return MetricResult(_as_score(score), "" if feedback is None else str(feedback))
    if hasattr(value, "score") and not isinstance(value, (int, float)):
        return MetricResult(_as_score(value.score), str(getattr(value, "feedback", "") or ""))
    if isinstance(value, dict) and "score" in value:
        return MetricResult(_as_score(value["score"]), str(value.get("feedback", "") or ""))
    return MetricResult(_as_score(value))


async def call_metric(metric: Metric, example: dict[str, Any], prediction: dict[str, Any]) -> MetricResult:
    """Run ``metric`` and normalize its result; failures score 0 with the error recorded."""
    try:
        value = metric(example, prediction)
        if inspect.isawaitable(value):
            value = await value
        return normalize_metric_output(value)
    except (LMPermanentError, BudgetExceeded):
        raise  # the judge's model is misconfigured or the budget is spent: not this example's fault
    except Exception as exc:  # a user metric may raise anything; the batch must go on
        name = getattr(metric, "__name__", type(metric).__name__)
        return MetricResult(0.0, "", error=f"metric {name} failed: {type(exc).__name__}: {exc}")
