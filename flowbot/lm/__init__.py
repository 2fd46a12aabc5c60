"""LM transport layer: providers, the response cache, usage meter, budgets and retries, and
structured (JSON-schema) replies. (A scripted LM and a test server for tests: :mod:`flowbot.testing`.)"""

from flowbot.lm.base import (
    BudgetExceeded,
    Completion,
    LMConnectionError,
    LMError,
    LMPermanentError,
    LMRequest,
    LMTransientError,
    LMUnreachable,
    Provider,
    Usage,
)
from flowbot.lm.budget import Budget, UsageMeter
from flowbot.lm.cache import ResponseCache
from flowbot.lm.client import LMClient
from flowbot.lm.retry import RetryPolicy
from flowbot.lm.schema import SchemaError
from flowbot.lm.structured import StructuredReply, check_schema, complete_json

__all__ = [
    "Budget", "BudgetExceeded", "Completion", "LMClient", "LMConnectionError", "LMError", "LMPermanentError",
    "LMRequest", "LMTransientError", "LMUnreachable", "Provider", "ResponseCache", "RetryPolicy", "SchemaError",
    "StructuredReply", "Usage", "UsageMeter", "check_schema", "complete_json",
]
