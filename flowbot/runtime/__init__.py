"""Running workflows: the async executor, traces, prompt rendering, batch evaluation, backends.
(What a metric returns and how a reply becomes an answer live one layer down, in :mod:`flowbot.scoring`.)"""

from flowbot.runtime.batch import BatchResult, ExampleResult, evaluate_examples
from flowbot.runtime.executor import Executor
from flowbot.runtime.trace import NodeRun, Trace

__all__ = ["BatchResult", "ExampleResult", "Executor", "NodeRun", "Trace", "evaluate_examples"]
