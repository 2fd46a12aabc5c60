"""LM transport layer: providers, the response cache, usage meter, budgets and retries, and
structured (JSON-schema) replies. (A scripted LM and a test server for tests: :mod:`flowbot.testing`.)"""

from flowbot.lm.base import (
    BudgetExceeded,
    Completion,
    LMError,
    LMPermanentError,
    LMRequest,
    LMTransientError,
    Message,
    Provider,
    Usage,
)
from flowbot.lm.budget import Budget, BudgetLimits, RoleUsage, UsageMeter
from flowbot.lm.cache import ResponseCache, cache_key
from flowbot.lm.client import LMClient
from flowbot.lm.retry import RetryPolicy
from flowbot.lm.schema import SchemaError, schema_text, unsupported_parts
from flowbot.lm.structured import StructuredReply, check_schema, complete_json

__all__ = [
    "Budget", "BudgetExceeded", "BudgetLimits", "Completion", "LMClient", "LMError",
    "LMPermanentError", "LMRequest", "LMTransientError", "Message", "Provider", "ResponseCache",
    "RetryPolicy", "RoleUsage", "SchemaError", "StructuredReply", "Usage", "UsageMeter",
    "cache_key", "check_schema", "complete_json", "schema_text", "unsupported_parts",
]
