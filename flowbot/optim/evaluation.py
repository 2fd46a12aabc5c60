"""Scoring workflows on example sets for the optimizers, with memoisation and strict budgets.

A partial evaluation (stopped by the budget) is not comparable with a full one, so the evaluator
raises :class:`BudgetExceeded` instead of returning it; the loops catch that at their top level.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from flowbot.graph.io import workflow_to_dict
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.runtime.batch import BatchResult, evaluate_examples
from flowbot.runtime.executor import Executor
from flowbot.runtime.scoring import Metric

Event = dict[str, Any]
EventSink = Callable[[Event], None]


def workflow_hash(workflow: Workflow) -> str:
    body = workflow_to_dict(workflow)
    for key in ("flowbot_version", "name", "description", "meta"):
        body.pop(key, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class Evaluator:
    def __init__(self, executor: Executor, metric: Metric, *, concurrency: int = 4, progress: bool = False) -> None:
        self.executor = executor
        self.metric = metric
        self.concurrency = concurrency
        self.progress = progress
        self._memo: dict[tuple[str, tuple[str, ...]], BatchResult] = {}

    def with_executor(self, executor: Executor) -> "Evaluator":
        """The same evaluator (and memo) running through another executor, e.g. another budget."""
        clone = Evaluator(executor, self.metric, concurrency=self.concurrency, progress=self.progress)
        clone._memo = self._memo
        return clone

    async def __call__(self, workflow: Workflow, examples: list[dict[str, Any]], description: str = "evaluating") -> BatchResult:
        ids = tuple(str(ex.get("id", i)) for i, ex in enumerate(examples))
        key = (workflow_hash(workflow), ids)
        if key in self._memo:
            return self._memo[key]
        result = await evaluate_examples(
            self.executor, workflow, examples, self.metric,
            concurrency=self.concurrency, progress=self.progress, description=description,
        )
        if result.stopped:
            raise BudgetExceeded(result.stopped)
        self._memo[key] = result
        return result
