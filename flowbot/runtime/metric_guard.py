"""Telling a broken metric from a bad workflow.

A metric that fails on one example (raises, returns a non-number or a score outside [0, 1])
scores that example 0 and records why; the batch goes on. A metric that fails on most of the
first examples a batch scores is broken, and every score after it would be a silent zero, so
:class:`MetricGuard` stops the batch with :class:`flowbot.errors.MetricFailure`, naming the
metric and an example.

    >>> guard = MetricGuard("score", total=3)
    >>> guard.observe("ex-1", "metric score returned 'yes'")
    >>> guard.observe("ex-2", "metric score returned 'no'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flowbot.errors.MetricFailure: metric score failed on 2 of the first 3 examples ...

Only examples the workflow answered count: a metric may fairly fail on a missing prediction. A
batch of fewer than three examples is not judged (one flaky example is no evidence): the
optimizers score candidates in small chunks, and the seed's validation, scored first and whole,
is where a broken metric shows.
"""

from __future__ import annotations

from flowbot.errors import MetricFailure

#: how many of a batch's first scored examples the guard judges the metric on
WINDOW = 8
#: smaller batches are not judged
MIN_BATCH = 3


class MetricGuard:
    def __init__(self, metric_name: str, total: int, window: int = WINDOW) -> None:
        self.metric_name = metric_name
        self.active = total >= MIN_BATCH
        self.size = max(1, min(window, total))
        self.seen = 0
        self.failures: list[tuple[str, str]] = []  # (example id, error)

    def observe(self, example_id: str, metric_error: str | None) -> None:
        """Record one scored example; raises MetricFailure once most of the window failed."""
        if not self.active or self.seen >= self.size:
            return  # a batch too small to judge, or the window is full and the metric passed
        self.seen += 1
        if metric_error is None:
            return
        self.failures.append((example_id, metric_error))
        if len(self.failures) > self.size // 2:
            first_id, first_error = self.failures[0]
            raise MetricFailure(
                f"metric {self.metric_name} failed on {len(self.failures)} of the first {self.size} examples "
                f"(example {first_id!r}: {first_error}); a metric must return a number between 0 and 1 "
                "(or a bool, or (score, feedback)); fix the metric")


def metric_name(metric: object) -> str:
    return getattr(metric, "__name__", None) or type(metric).__name__
