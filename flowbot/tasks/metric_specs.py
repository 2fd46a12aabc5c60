"""Metrics as the optimizer uses them: ``metric(example, prediction) -> MetricResult``.

A built-in metric compares the workflow's output field with the example's target field (a list of
targets counts as acceptable alternatives: the best match is taken) and explains a miss in one line,
which goes into the textual loss. ``resolve_metric`` turns a name, ``module:function``,
``path/to/file.py:function`` or a callable into such a metric.

    >>> m = resolve_metric("numeric", target="answer", output="answer")
    >>> m({"answer": "1,000"}, {"answer": "1000.0"}).score
    1.0
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from flowbot.errors import FlowBotError
from flowbot.scoring.result import MetricResult
from flowbot.scoring.values import format_value
from flowbot.tasks import metrics as M
from flowbot.tasks.loaders import DataError

StringMetric = Callable[[str, Any], float]


class MetricError(FlowBotError):
    """A metric that cannot be found or built; the message says what to fix."""


def _as_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else format_value(value)


class FieldMetric:
    """Scores ``prediction[output]`` against ``example[target]`` with a string metric."""

    def __init__(self, name: str, fn: StringMetric, *, target: str, output: str, extract: str = "answer",
                 alternatives: bool = True) -> None:
        self.__name__ = name
        self.fn = fn
        self.target = target
        self.output = output
        self.extract = extract
        self.alternatives = alternatives

    def __call__(self, example: dict[str, Any], prediction: dict[str, Any]) -> MetricResult:
        if self.target not in example:
            raise KeyError(f"example has no target field {self.target!r}")
        pred = _as_text(prediction.get(self.output))
        gold = example[self.target]
        if self.alternatives and isinstance(gold, (list, tuple)):
            score = max((float(self.fn(pred, g)) for g in gold), default=0.0)
        else:
            score = float(self.fn(pred, gold))
        return MetricResult(score, "" if score >= 1.0 else self.explain(pred, gold, score))

    def explain(self, pred: str, gold: Any, score: float) -> str:
        shown = gold if not isinstance(gold, (list, tuple)) else " | ".join(map(str, list(gold)[:5]))
        if not pred.strip():
            return f"the output field '{self.output}' was empty; expected {str(shown)[:200]!r}"
        return f"{self.__name__} {score:.2f}: expected {str(shown)[:200]!r}, got {pred[:200]!r}"


class PassAtOne:
    """Runs the predicted code against the example's tests in the sandbox (1.0 when all pass)."""

    __name__ = "pass_at_1"
    extract = "code"

    def __init__(self, *, output: str, tests: str = "test", entry_point: str = "entry_point",
                 timeout_s: float = 10.0) -> None:
        self.output = output
        self.tests = tests
        self.entry_point = entry_point
        self.timeout_s = timeout_s

    async def __call__(self, example: dict[str, Any], prediction: dict[str, Any]) -> MetricResult:
        from flowbot.scoring.extract import extract_code
        from flowbot.tasks.metrics.code_tests import run_tests

        code = extract_code(_as_text(prediction.get(self.output)))
        tests = example.get(self.tests)
        if tests is None:
            raise KeyError(f"example has no tests field {self.tests!r}")
        if isinstance(tests, list):
            tests = "\n".join(tests)
        entry = example.get(self.entry_point)
        prelude = "\n".join(example.get("test_imports") or [])
        result = await run_tests(f"{prelude}\n{code}" if prelude else code, tests, entry_point=entry,
                                 timeout_s=self.timeout_s)
        return MetricResult(1.0 if result.passed else 0.0, "" if result.passed else f"tests failed: {result.error}")


def _label_metric(labels: list[str] | None) -> StringMetric:
    if not labels:
        raise MetricError("metric 'label' needs the task's labels (labels=[...])")
    return lambda pred, gold: M.label_accuracy(pred, str(gold), labels)


def _drop(pred: str, gold: Any) -> float:
    return M.drop_score(pred, gold)[1]


def _hotpot_em(pred: str, gold: Any) -> float:
    return M.hotpot_exact_match(pred, str(gold))


#: name -> (string metric builder, default extraction rule for seed workflows, help)
BUILTINS: dict[str, tuple[Callable[[list[str] | None], StringMetric], str, str]] = {
    "exact_match": (lambda labels: M.exact_match, "answer", "SQuAD-normalized exact match"),
    "f1": (lambda labels: M.f1, "answer", "SQuAD-normalized token F1"),
    "numeric": (lambda labels: lambda p, g: float(M.numeric_equal(p, g)), "number", "numeric equality"),
    "contains": (lambda labels: M.contains, "answer", "normalized gold is a substring of the output"),
    "label": (_label_metric, "label", "accuracy over a closed label set"),
    "gsm8k": (lambda labels: M.gsm8k_score, "number", "GSM8K: the final number equals the gold number"),
    "math": (lambda labels: M.math_score, "boxed", "MATH: answer equivalence (math-verify)"),
    "hotpot_f1": (lambda labels: M.hotpot_f1, "answer", "HotpotQA official answer F1"),
    "hotpot_em": (lambda labels: _hotpot_em, "answer", "HotpotQA official exact match"),
    "drop_f1": (lambda labels: _drop, "answer", "DROP F1 (numbers, multi-span), max over alternatives"),
    "triviaqa_em": (lambda labels: M.triviaqa_exact_match, "answer", "TriviaQA EM, max over aliases"),
    "triviaqa_f1": (lambda labels: M.triviaqa_f1, "answer", "TriviaQA F1, max over aliases"),
    "fever": (lambda labels: M.fever_score, "label", "FEVER label accuracy"),
}
SPECIAL = {"pass_at_1": "code run against the example's tests in the sandbox",
           "llm_judge:<rubric>": "an LLM grades the output with a rubric (score in [0, 1] and a reason)"}


def metric_names() -> dict[str, str]:
    return {**{k: v[2] for k, v in BUILTINS.items()}, **SPECIAL}


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:function`` or ``path/to/file.py:function``."""
    if ":" not in spec:
        raise MetricError(f"metric {spec!r} is neither a built-in ({', '.join(metric_names())}) "
                          "nor 'module:function' / 'file.py:function'")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise MetricError(f"metric file {path} not found" if not path.exists() else f"metric file {path} is not a file")
        module_name = f"flowbot_user_metric_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise MetricError(f"cannot load {path} as Python")
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            raise MetricError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise MetricError(f"cannot import module {target!r} for metric {spec!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise MetricError(f"{target} has no callable {attr!r}")
    return fn


def resolve_metric(spec: Any, *, target: str, output: str, labels: list[str] | None = None) -> Any:
    """A metric callable from a name, an import path, an LLM-judge spec or a callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise DataError(f"metric must be a name or a callable, not {type(spec).__name__}")
    if spec in BUILTINS:
        builder, extract, _ = BUILTINS[spec]
        try:
            fn = builder(labels)
        except MetricError as exc:
            raise DataError(str(exc)) from None
        # DROP scores a prediction against all accepted answers at once (its own alignment)
        return FieldMetric(spec, fn, target=target, output=output, extract=extract,
                           alternatives=spec != "drop_f1")
    if spec == "pass_at_1":
        return PassAtOne(output=output, tests=target)
    if spec.startswith("llm_judge"):
        from flowbot.tasks.judge import LLMJudge

        rubric = spec.partition(":")[2].strip()
        if not rubric:
            raise DataError("llm_judge needs a rubric: 'llm_judge:<what a good answer does>'")
        return LLMJudge(rubric, output=output, reference=target)
    try:
        return load_callable(spec)
    except MetricError as exc:
        raise DataError(str(exc)) from None
