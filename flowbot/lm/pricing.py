"""Prices the user gives (``--price MODEL=IN/OUT``), and the rule that a dollar budget needs them.

A dollar cap over a model whose price is unknown would count $0 for every call and never stop the
run, so it is refused before anything is paid, with the model named:

    >>> parse_price("my-model=0.15/0.60")
    ('my-model', (1.5e-07, 6e-07))
    >>> require_prices(10.0, {"task": ("my-model", None)})
    Traceback (most recent call last):
    ...
    flowbot.lm.pricing.UnknownPrice: a dollar budget is set but the price of model 'my-model' (task) is unknown; give it with --price my-model=IN/OUT (dollars per million input/output tokens, prices= in Python) or drop the dollar budget
"""

from __future__ import annotations

from typing import Any, Mapping

from flowbot.errors import FlowBotError
from flowbot.lm.base import Completion, LMPermanentError, LMRequest, Provider

PER_MILLION = 1e-6


class UnknownPrice(LMPermanentError):
    """A dollar budget was set for a model without a known price."""


def parse_price(text: str) -> tuple[str, tuple[float, float]]:
    """``MODEL=IN/OUT`` in dollars per million tokens → (model, (input, output) dollars per token)."""
    model, sep, rest = text.rpartition("=")
    parts = rest.split("/")
    if not sep or not model.strip() or len(parts) != 2:
        raise FlowBotError(f"--price {text!r}: expected MODEL=IN/OUT, e.g. gpt-4o-mini=0.15/0.60 "
                         "(dollars per million input/output tokens)")
    try:
        cost_in, cost_out = (float(p) for p in parts)
    except ValueError:
        raise FlowBotError(f"--price {text!r}: IN and OUT must be numbers (dollars per million tokens)") from None
    if cost_in < 0 or cost_out < 0:
        raise FlowBotError(f"--price {text!r}: prices cannot be negative")
    return model.strip(), (cost_in * PER_MILLION, cost_out * PER_MILLION)


def per_token_prices(prices: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    """``prices=`` of the Python API: ``{"model": (in, out)}`` per million tokens, or ``"IN/OUT"``."""
    out: dict[str, tuple[float, float]] = {}
    for model, value in (prices or {}).items():
        if isinstance(value, str):
            out[model] = parse_price(f"{model}={value}")[1]
            continue
        try:
            cost_in, cost_out = (float(v) for v in value)
        except (TypeError, ValueError):
            raise FlowBotError(f"prices[{model!r}]: give (input, output) dollars per million tokens, "
                             f"e.g. (0.15, 0.60); got {value!r}") from None
        out[model] = (cost_in * PER_MILLION, cost_out * PER_MILLION)
    return out


def require_prices(max_usd: float | None, roles: Mapping[str, tuple[str, tuple[float, float] | None]]) -> None:
    """Raise :class:`UnknownPrice` when a dollar cap is set and a role's model has no price.

    ``roles`` maps a role (task, optimizer, judge, or a node that names its own model) to
    ``(model name, price per token or None)``."""
    if max_usd is None:
        return
    for role, (model, price) in roles.items():
        if price is None:
            raise UnknownPrice(
                f"a dollar budget is set but the price of model {model!r} ({role}) is unknown; give it with "
                f"--price {model}=IN/OUT (dollars per million input/output tokens, prices= in Python) "
                "or drop the dollar budget")


class PricedProvider(Provider):
    """A provider with a price the user gave; everything else is the wrapped provider's.

    The cache id is the wrapped one's, so a price never changes which responses are reused."""

    def __init__(self, inner: Provider, price_per_token: tuple[float, float]) -> None:
        self.inner = inner
        self.model = inner.model
        self.max_concurrency = getattr(inner, "max_concurrency", 8)
        self._price = price_per_token

    async def complete(self, request: LMRequest) -> Completion:
        result = await self.inner.complete(request)
        if result.usage.cost_usd is None:  # the client prices it from price_per_token()
            return result
        usage = result.usage
        cost = usage.prompt_tokens * self._price[0] + usage.completion_tokens * self._price[1]
        return Completion(texts=result.texts, usage=type(usage)(usage.prompt_tokens, usage.completion_tokens, cost),
                          model=result.model, cached=result.cached)

    def price_per_token(self) -> tuple[float, float]:
        return self._price

    @property
    def cache_id(self) -> str:
        return self.inner.cache_id

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"PricedProvider({self.inner!r}, price_per_token={self._price})"
