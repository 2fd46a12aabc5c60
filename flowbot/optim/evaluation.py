"""Scoring workflows on example sets for the optimizers, with per-item memoisation and strict budgets.

Results are memoised per (workflow, example), so racing a candidate chunk by chunk, or scoring it on
a superset later, never runs an item twice in a session. An example is known by its ``id`` (or, when
it has none, by a digest of its content — never by its position in a list, which differs between a
minibatch and the validation set).

A partial evaluation (stopped by the budget) is not comparable with a full one, so the evaluator
raises :class:`BudgetExceeded` instead of returning it; the loops catch that at their top level.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from flowbot.graph.io import workflow_to_dict
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded, Usage
from flowbot.runtime.batch import BatchResult, ExampleResult, evaluate_examples
from flowbot.runtime.executor import Executor
from flowbot.scoring.result import Metric

Event = dict[str, Any]
EventSink = Callable[[Event], None]


def workflow_hash(workflow: Workflow) -> str:
    body = workflow_to_dict(workflow)
    for key in ("flowbot_version", "name", "description", "meta"):
        body.pop(key, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def with_ids(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The examples, each with an ``id`` (a content digest where it had none)."""
    out = []
    for ex in examples:
        if ex.get("id") is None:
            digest = hashlib.sha256(json.dumps(ex, sort_keys=True, default=str).encode()).hexdigest()[:12]
            ex = {**ex, "id": f"x-{digest}"}
        out.append(ex)
    return out


class Evaluator:
    def __init__(self, executor: Executor, metric: Metric, *, concurrency: int = 4, progress: bool = False) -> None:
        self.executor = executor
        self.metric = metric
        self.concurrency = concurrency
        self.progress = progress
        self._memo: dict[tuple[str, str], ExampleResult] = {}

    def with_executor(self, executor: Executor) -> "Evaluator":
        """The same evaluator (and memo) running through another executor, e.g. another budget."""
        clone = Evaluator(executor, self.metric, concurrency=self.concurrency, progress=self.progress)
        clone._memo = self._memo
        return clone

    async def __call__(self, workflow: Workflow, examples: list[dict[str, Any]], description: str = "evaluating") -> BatchResult:
        examples = with_ids(examples)
        key = workflow_hash(workflow)
        missing = [ex for ex in examples if (key, str(ex["id"])) not in self._memo]
        if missing:
            result = await evaluate_examples(
                self.executor, workflow, missing, self.metric,
                concurrency=self.concurrency, progress=self.progress and len(missing) > 1, description=description,
            )
            for r in result.results:
                self._memo[(key, r.example_id)] = r
            if result.stopped:
                raise BudgetExceeded(result.stopped)
        return assemble([self._memo[(key, str(ex["id"]))] for ex in examples], len(examples))


def assemble(results: list[ExampleResult], requested: int) -> BatchResult:
    """A BatchResult from per-item results (usage and calls summed from their traces)."""
    usage = Usage()
    for r in results:
        if r.trace is not None:
            usage = usage + r.trace.usage
    return BatchResult(results=list(results), requested=requested, usage=usage,
                       calls=sum(r.trace.calls for r in results if r.trace is not None))
