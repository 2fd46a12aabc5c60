"""What runtime and tasks share to score an output: the metric result and how a metric is called
(:mod:`.result`), answer extraction from a raw reply (:mod:`.extract`) and how a field value reads
as text (:mod:`.values`). It sits below both: it imports only the LM layer's error types."""

from flowbot.scoring.extract import apply_extraction
from flowbot.scoring.result import Metric, MetricResult, call_metric, normalize_metric_output
from flowbot.scoring.values import format_value

__all__ = ["Metric", "MetricResult", "apply_extraction", "call_metric", "format_value", "normalize_metric_output"]
