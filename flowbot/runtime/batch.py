"""Batch evaluation: run a workflow over examples with bounded concurrency, a progress bar and a
metric. A failing node or example is recorded and scored 0; it never stops the batch. A used-up
budget stops launching new examples and returns what was done, marked with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flowbot.errors import MetricFailure
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded, LMPermanentError, Usage
from flowbot.runtime.executor import Executor
from flowbot.runtime.metric_guard import MetricGuard, metric_name
from flowbot.runtime.trace import Trace
from flowbot.scoring.result import Metric, MetricResult, call_metric


@dataclass
class ExampleResult:
    example_id: str
    example: dict[str, Any]
    prediction: dict[str, Any]
    score: float
    feedback: str = ""
    error: str | None = None  # workflow error or metric error
    trace: Trace | None = None

    def to_dict(self, with_trace: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.example_id,
            "example": self.example,
            "prediction": self.prediction,
            "score": self.score,
            "feedback": self.feedback,
            "error": self.error,
        }
        if with_trace and self.trace is not None:
            d["trace"] = self.trace.to_dict()
        return d


@dataclass
class BatchResult:
    results: list[ExampleResult]
    requested: int  # examples asked for (more than len(results) when stopped early)
    stopped: str | None = None  # why the batch stopped early (budget), else None
    wall_s: float = 0.0
    usage: Usage = field(default_factory=Usage)  # nominal usage of all traces (cached or not)
    calls: int = 0

    @property
    def score(self) -> float:
        """Mean score over evaluated examples (0 when none)."""
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def complete(self) -> bool:
        return self.stopped is None and len(self.results) == self.requested

    def scores(self) -> dict[str, float]:
        return {r.example_id: r.score for r in self.results}

    def stderr(self) -> float:
        n = len(self.results)
        if n < 2:
            return 0.0
        m = self.score
        var = sum((r.score - m) ** 2 for r in self.results) / (n - 1)
        return math.sqrt(var / n)

    def cost_per_example(self) -> float:
        """Nominal dollars per example (0 when prices are unknown)."""
        return (self.usage.cost_usd or 0.0) / len(self.results) if self.results else 0.0

    def tokens_per_example(self) -> float:
        return self.usage.total_tokens / len(self.results) if self.results else 0.0

    def stuck_output(self, share: float = 0.8, least: int = 10) -> str | None:
        """A warning when one output is most of the answers and scored 0 every time: the workflow's
        output is then rarely an answer at all (a tool call left unrun, a refusal, a template), and
        a mean of about 0 would otherwise pass for a weak method. None when nothing is stuck.

        >>> r = lambda a, s: ExampleResult("x", {}, {"answer": a}, s)
        >>> BatchResult([r("Action: python", 0.0)] * 12, requested=12).stuck_output()
        "12 of 12 outputs are {'answer': 'Action: python'}, each scored 0: is that an answer? (see a trace)"
        >>> BatchResult([r("7", 1.0)] * 12, requested=12).stuck_output() is None
        True
        """
        if len(self.results) < least:
            return None
        groups: dict[str, list[ExampleResult]] = {}
        for r in self.results:
            groups.setdefault(repr(sorted(r.prediction.items())), []).append(r)
        same = max(groups.values(), key=len)
        if len(same) < share * len(self.results) or any(r.score > 0 for r in same):
            return None
        return (f"{len(same)} of {len(self.results)} outputs are {same[0].prediction}, each scored 0: "
                "is that an answer? (see a trace)")


def example_id(example: dict[str, Any], index: int) -> str:
    for key in ("id", "_id", "task_id", "unique_id"):
        if key in example and example[key] is not None:
            return str(example[key])
    return str(index)


class Backend(Protocol):
    """Where the examples of an evaluation run (see :mod:`flowbot.runtime.backends`). A backend is
    passed to :func:`evaluate_examples`, or made active for a block with :func:`use_backend`, which
    reaches the evaluations the optimizers start inside it."""

    name: str

    async def evaluate(self, executor: Executor, workflow: Workflow, examples: list[dict[str, Any]],
                       metric: Metric, *, concurrency: int, progress: Any, description: str,
                       on_result: Callable[[ExampleResult], None] | None,
                       guard_metric: bool = True) -> BatchResult:
        """Run and score every example, with the semantics of the local path: the executor's
        cache, meter and budget see every call; a used-up budget stops launching examples; the
        first permanent LM error is raised and stops the rest, and so is a broken metric's
        ``MetricFailure`` (unless ``guard_metric`` is False)."""


_ACTIVE: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("flowbot_backend", default=None)


def active_backend() -> Backend | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def use_backend(backend: Backend | None) -> Iterator[None]:
    token = _ACTIVE.set(backend)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


async def evaluate_examples(
    executor: Executor,
    workflow: Workflow,
    examples: list[dict[str, Any]],
    metric: Metric,
    *,
    concurrency: int = 8,
    progress: bool | Progress = False,
    description: str = "evaluating",
    on_result: Callable[[ExampleResult], None] | None = None,
    backend: Backend | None = None,
    guard_metric: bool = True,
) -> BatchResult:
    """Run ``workflow`` on every example and score it with ``metric``.

    The workflow's inputs are taken from each example by field name; ``metric(example, outputs)``
    receives the example and the workflow's output fields. ``backend`` (default: the one made active
    with ``use_backend``, else this event loop) says where the examples run. Raises
    ``LMPermanentError`` on the first permanent LM error and :class:`flowbot.errors.MetricFailure`
    when the metric fails on most of the first examples (``guard_metric=False`` turns that off).
    """
    backend = backend or active_backend()
    if backend is not None:
        return await backend.evaluate(executor, workflow, examples, metric, concurrency=concurrency,
                                      progress=progress, description=description, on_result=on_result,
                                      guard_metric=guard_metric)
    start = time.perf_counter()
    results: list[ExampleResult | None] = [None] * len(examples)
    semaphore = asyncio.Semaphore(max(1, concurrency))
    stop_reason: list[str] = []
    fatal: list[BaseException] = []  # the first error that stops the batch
    guard = MetricGuard(metric_name(metric), len(examples)) if guard_metric else None
    bar, task_id, owns_bar = progress_bar(progress, description, len(examples))
    tasks: list[asyncio.Future[None]] = []

    def stop_all(exc: BaseException) -> None:
        if not fatal:
            fatal.append(exc)
        me = asyncio.current_task()
        for t in tasks:
            if t is not me:
                t.cancel()  # in-flight calls would only repeat the error (or score in vain)

    async def one(i: int, ex: dict[str, Any]) -> None:
        if stop_reason or fatal:
            return
        async with semaphore:
            if stop_reason or fatal:
                return
            inputs = workflow_inputs(workflow, ex)
            try:
                trace = await executor.run(workflow, inputs)
            except BudgetExceeded as exc:
                stop_reason.append(str(exc))
                return
            except LMPermanentError as exc:
                stop_all(exc)
                return
            except Exception as exc:  # an executor bug must not sink the whole batch
                trace = Trace(inputs=inputs, error=f"{type(exc).__name__}: {exc}")
            try:
                res = await score_guarded(metric, guard, i, ex, trace)
            except MetricFailure as exc:
                stop_all(exc)
                return
            results[i] = res
            if on_result is not None:
                on_result(res)
            if bar is not None:
                bar.advance(task_id)

    tasks.extend(asyncio.ensure_future(one(i, ex)) for i, ex in enumerate(examples))
    try:
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()  # only matters when this evaluation itself is cancelled
        if owns_bar and bar is not None:
            bar.refresh()  # the final count (Jupyter shows only what was last refreshed)
            bar.stop()
    if fatal:
        raise fatal[0]
    for outcome in outcomes:  # anything else one() raised (e.g. an on_result callback's bug)
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome
    return collect(results, len(examples), stop_reason, start)


def workflow_inputs(workflow: Workflow, example: dict[str, Any]) -> dict[str, Any]:
    return {f: example[f] for f in workflow.sketch.inputs if f in example}


async def score_guarded(metric: Metric, guard: Any, index: int, example: dict[str, Any], trace: Trace) -> ExampleResult:
    """:func:`score_trace`, watched by ``guard`` (a :class:`~flowbot.runtime.metric_guard.MetricGuard`,
    or None): raises :class:`~flowbot.errors.MetricFailure` once the metric, not the workflow, is broken."""
    res = await score_trace(metric, index, example, trace)
    if guard is not None and trace.error is None:
        guard.observe(res.example_id, res.error)  # the run succeeded: any error is the metric's
    return res


async def score_trace(metric: Metric, index: int, example: dict[str, Any], trace: Trace) -> ExampleResult:
    """One example's result: its trace scored by the metric (a failed run or metric scores 0)."""
    scored: MetricResult = await call_metric(metric, example, trace.outputs)
    error = trace.error or scored.error
    return ExampleResult(example_id(example, index), example, trace.outputs, scored.score, scored.feedback, error,
                         trace)


def collect(results: list[ExampleResult | None], requested: int, stop_reason: list[str], start: float) -> BatchResult:
    """The batch of the examples that finished, in example order, with their summed usage."""
    done = [r for r in results if r is not None]
    usage = Usage()
    for r in done:
        if r.trace is not None:
            usage = usage + r.trace.usage
    return BatchResult(
        results=done,
        requested=requested,
        stopped=stop_reason[0] if stop_reason else None,
        wall_s=time.perf_counter() - start,
        usage=usage,
        calls=sum(r.trace.calls for r in done if r.trace is not None),
    )


def progress_bar(progress: bool | Progress, description: str, total: int):
    """(bar, task id, whether the caller owns the bar and must stop it) for ``progress``."""
    if progress is False:
        return None, None, False
    if isinstance(progress, Progress):
        return progress, progress.add_task(description, total=total), False
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
    )
    bar.start()
    return bar, bar.add_task(description, total=total), True
