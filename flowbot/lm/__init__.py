"""LM transport layer: providers, the response cache, usage meter, budgets and retries, and
structured (JSON-schema) replies."""

from flowbot.lm.base import (
    BudgetExceeded,
    Completion,
    LMConnectionError,
    LMError,
    LMPermanentError,
    LMRequest,
    LMTransientError,
    LMUnreachable,
    Message,
    Provider,
    Usage,
)
from flowbot.lm.budget import Budget, BudgetLimits, RoleUsage, UsageMeter
from flowbot.lm.cache import ResponseCache, cache_key
from flowbot.lm.client import LMClient
from flowbot.lm.retry import RetryPolicy
from flowbot.lm.schema import SchemaError, schema_text, unsupported_parts
from flowbot.lm.scripted import ScriptedLM
from flowbot.lm.structured import StructuredReply, check_schema, complete_json

__all__ = [
    "Budget", "BudgetExceeded", "BudgetLimits", "Completion", "LMClient", "LMConnectionError", "LMError",
    "LMPermanentError", "LMRequest", "LMTransientError", "LMUnreachable", "Message", "Provider", "ResponseCache",
    "RetryPolicy", "RoleUsage", "SchemaError", "ScriptedLM", "StructuredReply", "Usage", "UsageMeter",
    "cache_key", "check_schema", "complete_json", "schema_text", "unsupported_parts",
]
