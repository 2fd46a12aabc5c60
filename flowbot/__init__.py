"""FlowBot: induce LLM workflows from data with bilevel optimization and textual gradients.

    >>> import flowbot
    >>> task = flowbot.Task("sentiment", data="reviews.jsonl", inputs=["text"],      # doctest: +SKIP
    ...                     targets=["label"], metric="label", labels=["positive", "negative"])
    >>> result = flowbot.optimize(task, budget={"calls": 500})                       # doctest: +SKIP
    >>> result.best.save("best.json")                                                # doctest: +SKIP
    >>> flowbot.load("best.json")(text="Great film!")                                # doctest: +SKIP
    {'label': 'positive'}

The names below are imported lazily, so ``import flowbot`` stays fast and light.
"""

from __future__ import annotations

from typing import Any

from flowbot.version import __version__

_EXPORTS = {
    "Task": "flowbot.tasks.task",
    "RunnableWorkflow": "flowbot.runtime.runnable",
    "load": "flowbot.api",
    "evaluate": "flowbot.api",
    "aevaluate": "flowbot.api",
    "optimize": "flowbot.api",
    "aoptimize": "flowbot.api",
    "estimate": "flowbot.api",
    "EvalResult": "flowbot.api",
    "OptimizationResult": "flowbot.optim.driver",
    "Budget": "flowbot.lm.budget",
    "MetricResult": "flowbot.scoring.result",
    "LLMJudge": "flowbot.tasks.judge",
    "load_benchmark": "flowbot.tasks.benchmarks",
    "typed_callback": "flowbot.optim.events",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowbot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
