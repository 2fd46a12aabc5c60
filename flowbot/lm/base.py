"""The LM interface every provider implements: messages in, completions (text + usage) out.

A *provider* is transport only (how a request reaches a model). Caching, metering, budgets and
the concurrency limit are added around any provider by :class:`flowbot.lm.client.LMClient`.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from flowbot.lm.schema import schema_text

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class LMRequest:
    """One chat request. ``n`` samples are returned; sample *i* uses ``seed + i`` when seeded.

    ``schema``: the JSON schema the reply must satisfy, as canonical JSON text
    (:func:`flowbot.lm.schema.schema_text`; ``LMRequest.of(..., schema=dict)`` makes it). A
    provider with ``supports_schema`` enforces it; others ignore it (see :mod:`flowbot.lm.structured`).
    """

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, hashable
    temperature: float = 0.0
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    schema: str | None = None

    @classmethod
    def of(cls, messages: list[Message], **kw: Any) -> "LMRequest":
        pairs = tuple((m["role"], m["content"]) for m in messages)
        if "stop" in kw:
            stop = kw["stop"]
            kw["stop"] = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        if kw.get("schema") is not None and not isinstance(kw["schema"], str):
            kw["schema"] = schema_text(kw["schema"])
        return cls(messages=pairs, **kw)

    def message_dicts(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The schema as a dict (a fresh copy), or None when the request has none."""
        return None if self.schema is None else json.loads(self.schema)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None when the price is unknown

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            cost,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Usage":
        d = d or {}
        return cls(int(d.get("prompt_tokens", 0)), int(d.get("completion_tokens", 0)), d.get("cost_usd"))


@dataclass
class Completion:
    """The answer to one request: ``texts[i]`` is sample *i*."""

    texts: list[str]
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    cached: list[bool] = field(default_factory=list)  # per sample: served from the cache

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


class LMError(Exception):
    """Base class of LM failures that reach the caller."""


class LMTransientError(LMError):
    """Worth retrying: rate limit, server error, timeout, dropped connection, malformed body."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class LMConnectionError(LMTransientError):
    """No connection to the server could be made (refused, unknown host, connect timeout): worth
    retrying, but when no attempt connects, the server is unreachable (:class:`LMUnreachable`)."""

    def __init__(self, message: str, server: str | None = None):
        super().__init__(message)
        self.server = server

    def __reduce__(self):  # (pickled with its server, e.g. back from a Ray worker)
        return type(self), (str(self), self.server)


class LMPermanentError(LMError):
    """Not worth retrying: bad key, unknown model, invalid request. The message says what to fix."""


class LMUnreachable(LMPermanentError):
    """Every attempt of a call failed to connect to the server: nothing more will get through, so
    an evaluation or a run stops here instead of scoring every example 0."""


#: exception classes (by name, to cover httpx, aiohttp and the socket layer alike) that mean a
#: connection could not be made at all, as opposed to one dropped after the request was sent
_CONNECT_FAILURES = frozenset(("ConnectError", "ConnectTimeout", "ClientConnectorError", "ConnectionRefusedError",
                               "gaierror", "ClientConnectorDNSError"))


def could_not_connect(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says no connection could be made."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(k.__name__ in _CONNECT_FAILURES for k in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class BudgetExceeded(Exception):
    """A budget (calls, tokens, dollars or time) would be exceeded by the next call. Control flow,
    not a failure of the LM: the loops catch it and end cleanly with what they have."""


class Provider(abc.ABC):
    """Transport to one model. Implementations must be safe to call concurrently."""

    #: model identifier used in cache keys and reports
    model: str

    @abc.abstractmethod
    async def complete(self, request: LMRequest) -> Completion:
        """Return ``request.n`` samples. Raise LMTransientError / LMPermanentError on failure."""

    def price_per_token(self) -> tuple[float, float] | None:
        """(input, output) dollars per token, or None when unknown."""
        return None

    @property
    def cache_id(self) -> str:
        """What identifies the model in cache keys (a server URL too, where names can collide)."""
        return self.model

    #: at most this many requests in flight to this provider (the client enforces it)
    max_concurrency: int = 8

    #: True when the provider makes replies satisfy ``request.schema`` (a grammar, or a server's
    #: structured-output mode); False when it only passes the schema on, or ignores it
    supports_schema: bool = False

    async def aclose(self) -> None:  # pragma: no cover - optional
        return None
