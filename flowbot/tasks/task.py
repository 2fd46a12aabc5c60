"""``Task``: your data, which fields are inputs and targets, a metric, and fixed splits.

    >>> from flowbot.tasks import Task
    >>> rows = [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(10)]
    >>> task = Task("add", data=rows, inputs=["question"], targets=["answer"], metric="exact_match")
    >>> task.sizes()
    {'train': 6, 'val': 2, 'test': 2}

The six benchmarks are built through this same class (see :mod:`flowbot.tasks.benchmarks`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Iterable

from flowbot.graph.nodes import NAME_RE
from flowbot.tasks.loaders import DataError, Row, parse_jsonish, read_rows
from flowbot.tasks.metric_specs import resolve_metric

SPLITS = ("train", "val", "test")
Example = dict[str, Any]


class Task:
    def __init__(
        self,
        name: str = "task",
        *,
        inputs: Iterable[str],
        targets: Iterable[str] | str,
        metric: Any = "exact_match",
        data: Any = None,
        train: Any = None,
        val: Any = None,
        test: Any = None,
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        output: str | None = None,
        labels: list[str] | None = None,
        description: str = "",
        transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
        extract: str | None = None,
        tools: Iterable[str] | None = None,
        context_fields: Iterable[str] | None = None,
    ) -> None:
        """
        Args:
            inputs: fields of each row the workflow reads.
            targets: ground-truth field(s); the first is compared with the workflow's output.
            metric: a built-in name (``exact_match``, ``f1``, ``numeric``, ``contains``, ``label``,
                ``pass_at_1``, benchmark metrics ...), ``module:function``, ``path.py:function``,
                or a callable ``metric(example, prediction)``.
            data / train / val / test: a list of dicts, a file (.jsonl/.json/.csv/.parquet, maybe
                .gz) or ``hf:name[:config][@split]``. With only ``data``, it is split by ``split``
                ratios with ``seed``; with ``data`` plus ``val``/``test``, ``data`` is the training set.
            output: the workflow output field to score (default: the first target's name).
            labels: the closed label set of a classification task (for ``label`` metrics and seeds).
            description: one paragraph on the task, shown to the optimizer.
            transform: maps each raw row to an example (return None to skip a row on purpose).
            extract: the answer-extraction rule seed workflows use (``answer``, ``number``, ``label``,
                ``boxed``, ``code``, ``text``); chosen from the metric when omitted.
            tools: the tools that make sense for this task (``python``, ``calculator``, ``retrieve``);
                the optimizer offers only these. None by default: a task without tools gets none.
            context_fields: inputs that hold passages or other context to read from (e.g. HotpotQA's
                ``context``): what retrieval searches and what extract-then-answer quotes from.
        """
        self.name = name
        self.inputs = list(inputs)
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        if not self.inputs:
            raise DataError(f"task {name!r}: declare at least one input field")
        if not self.targets:
            raise DataError(f"task {name!r}: declare at least one target field")
        overlap = set(self.inputs) & set(self.targets)
        if overlap:
            raise DataError(f"task {name!r}: field(s) {sorted(overlap)} cannot be both input and target")
        self.output = output or self.targets[0]
        self.labels = labels
        self.description = description
        self.seed = seed
        self.metric_spec = metric
        self.metric = resolve_metric(metric, target=self.targets[0], output=self.output, labels=labels)
        self.extract = extract or getattr(self.metric, "extract", "answer")
        self.tools = _names(name, "tools", tools)
        self.context_fields = _names(name, "context_fields", context_fields)
        stray = [f for f in self.context_fields if f not in self.inputs]
        if stray:
            raise DataError(f"task {name!r}: context field(s) {stray} are not among the inputs {self.inputs}")
        self._transform = transform
        self._splits = self._build_splits(data, train, val, test, split)

    # -- building ------------------------------------------------------------------------
    def _examples(self, source: Any, split_name: str) -> list[Example]:
        examples = []
        rows = source if isinstance(source, list) and source and isinstance(source[0], Row) else read_rows(source)
        for row in rows:
            ex = self._prepare(row)
            if ex is not None:
                ex.setdefault("id", f"{split_name}-{row.index}")
                examples.append(ex)
        return examples

    def _prepare(self, row: Row) -> Example | None:
        data = row.data
        if self._transform is not None:
            try:
                data = self._transform(dict(data))
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise DataError(f"{row.where}: cannot read this row ({type(exc).__name__}: {exc})") from None
            if data is None:
                return None
        for kind, fields in (("input", self.inputs), ("target", self.targets)):
            for f in fields:
                if f not in data or data[f] is None:
                    known = ", ".join(sorted(data)) or "none"
                    raise DataError(f"{row.where}: missing {kind} field {f!r} (fields present: {known})")
        return {k: parse_jsonish(v) for k, v in data.items()}

    def _build_splits(self, data: Any, train: Any, val: Any, test: Any,
                      ratios: tuple[float, float, float]) -> dict[str, list[Example]]:
        given = {"train": train, "val": val, "test": test}
        if data is not None and train is not None:
            raise DataError(f"task {self.name!r}: give either data or train, not both")
        if data is not None and val is None and test is None:
            return self._ratio_split(self._examples(data, "data"), ratios)
        if data is not None:
            given["train"] = data
        if all(v is None for v in given.values()):
            raise DataError(f"task {self.name!r}: no data given (data=..., or train=/val=/test=)")
        return {name: self._examples(src, name) if src is not None else [] for name, src in given.items()}

    def _ratio_split(self, examples: list[Example], ratios: tuple[float, float, float]) -> dict[str, list[Example]]:
        if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise DataError(f"task {self.name!r}: split ratios must be three non-negative numbers")
        shuffled = list(examples)
        random.Random(self.seed).shuffle(shuffled)
        total = sum(ratios)
        n = len(shuffled)
        n_train = round(n * ratios[0] / total)
        n_val = round(n * ratios[1] / total)
        if ratios[1] > 0 and n_val == 0 and n - n_train > 1:
            n_val = 1
        return {
            "train": shuffled[:n_train],
            "val": shuffled[n_train:n_train + n_val],
            "test": shuffled[n_train + n_val:],
        }

    # -- access --------------------------------------------------------------------------
    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        """The examples of a split, in their fixed order; ``limit`` takes the first N."""
        if split == "validation" or split == "dev":
            split = "val"
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        rows = self._splits[split]
        return rows[:limit] if limit is not None else list(rows)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._splits.items()}

    def with_splits(self, **splits: list[Example]) -> "Task":
        """A copy with some splits replaced (e.g. a smaller training set)."""
        clone = object.__new__(Task)
        clone.__dict__.update(self.__dict__)
        clone._splits = {**self._splits, **splits}
        return clone

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.sizes().items())
        return (f"task {self.name}: inputs {', '.join(self.inputs)} → {self.output} "
                f"(target {', '.join(self.targets)}; metric {_metric_name(self.metric_spec)}; {sizes})")

    def __repr__(self) -> str:
        return f"Task({self.describe()})"

    # -- configuration files -------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Task":
        """A task described in YAML or TOML (paths inside are relative to that file)::

            name: sentiment
            data: reviews.jsonl        # or train:/val:/test:
            inputs: [text]
            targets: [label]
            metric: label
            labels: [positive, negative]
            tools: [python]            # optional: the tools the optimizer may use
            context_fields: []         # optional: inputs holding passages to read from
        """
        from flowbot.tasks.config import load_task_config

        return cls(**load_task_config(path))


def _names(task: str, key: str, values: Iterable[str] | None) -> list[str]:
    """A declared list of names (tools, fields), checked: identifiers, each once."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        if not isinstance(v, str) or not NAME_RE.match(v):
            raise DataError(f"task {task!r}: {key} entry {v!r} is not a name (letters, digits, underscore)")
        if v not in out:
            out.append(v)
    return out


def _metric_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return getattr(spec, "__name__", type(spec).__name__)
