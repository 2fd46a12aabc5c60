"""Tasks: your data (or a benchmark), its input and target fields, a metric, and fixed splits."""

from flowbot.tasks.benchmarks import BENCHMARKS, load_benchmark
from flowbot.tasks.judge import LLMJudge
from flowbot.tasks.loaders import DataError
from flowbot.tasks.metric_specs import MetricError, metric_names, resolve_metric
from flowbot.tasks.seeds import build_baseline, task_baseline
from flowbot.tasks.task import Task

__all__ = [
    "BENCHMARKS", "DataError", "LLMJudge", "MetricError", "Task", "build_baseline", "load_benchmark", "metric_names",
    "resolve_metric", "task_baseline",
]
