"""Building LM clients for a run: one provider per model name, shared cache, meter and budget.

    >>> from flowbot.testing import ScriptedLM
    >>> pool = ModelPool(default="scripted-test", providers={"scripted-test": ScriptedLM(default="hi")})
    >>> pool.client().model
    'scripted'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from flowbot.lm.base import Provider
from flowbot.lm.budget import Budget, UsageMeter
from flowbot.lm.cache import ResponseCache
from flowbot.lm.pricing import PricedProvider
from flowbot.lm.client import LMClient
from flowbot.lm.resolve import default_model, make_provider


def default_cache_path() -> Path | None:
    """The shared response cache of ``flowbot run``/``eval`` and the Python API; ``FLOWBOT_CACHE``
    names another file, or ``off`` disables caching."""
    setting = os.environ.get("FLOWBOT_CACHE", "")
    if setting.lower() in ("off", "0", "none", "false"):
        return None
    if setting:
        return Path(setting).expanduser()
    home = os.environ.get("FLOWBOT_HOME")
    base = Path(home).expanduser() if home else Path(user_cache_dir("flowbot"))
    return base / "responses.sqlite"


class ModelPool:
    """Clients by model name over shared state (cache, meter, budget, run id), one provider each.

    ``providers`` pre-registers providers by name (tests pass scripted LMs this way); ``prices``
    gives (input, output) dollars per token by model name, over the provider's own price."""

    def __init__(
        self,
        default: str | None = None,
        *,
        base_url: str | None = None,
        cache: ResponseCache | None = None,
        meter: UsageMeter | None = None,
        budget: Budget | None = None,
        run_id: str | None = None,
        seed: int = 0,
        providers: dict[str, Provider] | None = None,
        provider_options: dict[str, Any] | None = None,
        max_concurrency: int | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        self.default = default or default_model()
        self.base_url = base_url
        self.cache = cache
        self.meter = meter or UsageMeter()
        self.budget = budget
        self.run_id = run_id
        self.seed = seed
        self.max_concurrency = max_concurrency
        self._providers: dict[str, Provider] = dict(providers or {})
        self._options = provider_options or {}
        self.prices = dict(prices or {})
        self._clients: dict[tuple[str, str], LMClient] = {}

    def provider(self, name: str | None = None) -> Provider:
        name = name or self.default
        if name not in self._providers:
            base_url = self.base_url if name == self.default else None
            self._providers[name] = make_provider(name, base_url=base_url, **self._options)
        provider = self._providers[name]
        if name in self.prices and not isinstance(provider, PricedProvider):
            provider = self._providers[name] = PricedProvider(provider, self.prices[name])
        return provider

    def client(self, name: str | None = None, role: str = "task") -> LMClient:
        key = (name or self.default, role)
        if key not in self._clients:
            self._clients[key] = LMClient(
                self.provider(key[0]), role=role, cache=self.cache, meter=self.meter, budget=self.budget,
                default_seed=self.seed, run_id=self.run_id, max_concurrency=self.max_concurrency,
            )
        return self._clients[key]

    def resolver(self, role: str = "task"):
        """``name -> client`` for nodes that name their own model."""
        return lambda name: self.client(name, role)
