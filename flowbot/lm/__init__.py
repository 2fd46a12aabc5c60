"""LM transport layer: providers, the response cache, usage meter, budgets and retries."""

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
from flowbot.lm.scripted import ScriptedLM

__all__ = [
    "Budget", "BudgetExceeded", "BudgetLimits", "Completion", "LMClient", "LMError",
    "LMPermanentError", "LMRequest", "LMTransientError", "Message", "Provider", "ResponseCache",
    "RetryPolicy", "RoleUsage", "ScriptedLM", "Usage", "UsageMeter", "cache_key",
]
