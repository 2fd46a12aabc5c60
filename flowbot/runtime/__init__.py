"""Running workflows: the async executor, traces, prompt rendering, answer extraction, scoring."""

from flowbot.runtime.batch import BatchResult, ExampleResult, evaluate_examples, example_id
from flowbot.runtime.executor import Executor, majority_vote
from flowbot.runtime.scoring import Metric, MetricResult, call_metric, normalize_metric_output
from flowbot.runtime.trace import NodeRun, Trace

__all__ = [
    "BatchResult", "ExampleResult", "Executor", "Metric", "MetricResult", "NodeRun", "Trace",
    "call_metric", "evaluate_examples", "example_id", "majority_vote", "normalize_metric_output",
]
