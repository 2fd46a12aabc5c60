"""``LMClient``: what the rest of FlowBot calls. It wraps one provider with the response cache, the
per-role usage meter, the budget, the concurrency limit and retries.

    >>> import asyncio
    >>> from flowbot.lm import LMClient
    >>> from flowbot.testing import ScriptedLM
    >>> lm = LMClient(ScriptedLM(default="4"))
    >>> asyncio.run(lm.complete([{"role": "user", "content": "2+2?"}])).text
    '4'
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

from flowbot.lm.base import Completion, LMError, LMRequest, LMTransientError, Message, Provider, Usage
from flowbot.lm.budget import Budget, UsageMeter
from flowbot.lm.cache import ResponseCache, cache_key
from flowbot.lm.retry import RetryPolicy


class CacheMiss(LMError):
    """A cache-only client was asked for a response that is not cached."""


@dataclass
class _Shared:
    """State shared by every view of one client (role and budget views)."""

    semaphores: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]"
    limit: int
    meter: UsageMeter
    cache: ResponseCache | None
    run_id: str | None
    seen: set[str]  # cache keys this session already used (a replay charges each once)


class LMClient:
    def __init__(
        self,
        provider: Provider,
        *,
        role: str = "task",
        cache: ResponseCache | None = None,
        meter: UsageMeter | None = None,
        budget: Budget | None = None,
        max_concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        default_seed: int | None = 0,
        run_id: str | None = None,
    ) -> None:
        """``run_id``: responses this run paid for are stored with it; when the run is resumed,
        the first use of each of them is charged to the budget and meter again (as *replayed*), so a
        resumed run retraces the same decisions and its totals cover every session, while nothing
        is paid twice."""
        self.provider = provider
        self.role = role
        self.budget = budget
        self.retry = retry or RetryPolicy()
        self.default_seed = default_seed
        self._cache_only = False
        limit = max_concurrency or getattr(provider, "max_concurrency", 8)
        self._shared = _Shared(weakref.WeakKeyDictionary(), limit, meter or UsageMeter(), cache, run_id, set())

    # -- views ---------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.provider.model

    @property
    def supports_schema(self) -> bool:
        """Whether the provider enforces a request's JSON schema (else replies must be checked)."""
        return bool(getattr(self.provider, "supports_schema", False))

    @property
    def meter(self) -> UsageMeter:
        return self._shared.meter

    @property
    def cache(self) -> ResponseCache | None:
        return self._shared.cache

    @property
    def run_id(self) -> str | None:
        """The run whose responses this client stores (and charges again, once, on a resume)."""
        return self._shared.run_id

    def _view(self, **changes: Any) -> "LMClient":
        clone = object.__new__(LMClient)
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(changes)
        return clone

    def with_budget(self, budget: Budget | None) -> "LMClient":
        """The same client (cache, meter, concurrency) charging another budget."""
        return self._view(budget=budget)

    def with_role(self, role: str) -> "LMClient":
        return self._view(role=role)

    def cache_only(self) -> "LMClient":
        """A view that answers from the cache alone: a request that is not cached raises
        :class:`CacheMiss` instead of being paid (nothing is sent, no model is loaded)."""
        return self._view(_cache_only=True)

    def _semaphore(self) -> asyncio.Semaphore:
        # One per event loop: the sync API runs each call in a fresh loop, and an asyncio
        # semaphore must not be shared across loops.
        loop = asyncio.get_running_loop()
        for old in [lp for lp in self._shared.semaphores if lp.is_closed()]:
            del self._shared.semaphores[old]  # a waited-on semaphore keeps its loop alive
        sem = self._shared.semaphores.get(loop)
        if sem is None:
            sem = self._shared.semaphores[loop] = asyncio.Semaphore(self._shared.limit)
        return sem

    # -- the call ------------------------------------------------------------------------
    async def complete(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
        schema: dict[str, Any] | None = None,
    ) -> Completion:
        """Return ``n`` samples; cached samples cost nothing, missing ones are fetched.

        ``schema``: a JSON schema for the reply, passed to the provider and part of the cache key;
        :func:`flowbot.lm.structured.complete_json` parses and validates the reply."""
        if n < 1:
            raise ValueError("n must be at least 1")
        request = LMRequest.of(
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            n=n,
            seed=self.default_seed if seed is None else seed,
            stop=stop,
            schema=schema,
        )
        texts: list[str | None] = [None] * n
        usages: list[Usage] = [Usage() for _ in range(n)]
        cached = [False] * n
        cache = self._shared.cache
        keys = [cache_key(self.provider.cache_id, request, i) for i in range(n)] if cache is not None else []
        if self._cache_only:
            return self._from_cache_only(request, keys)
        replayed = Usage()
        n_replayed = 0
        if cache is not None:
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is None:
                    continue
                texts[i], usages[i] = hit.text, hit.usage
                cached[i] = True
                if self._shared.run_id is not None and hit.origin == self._shared.run_id \
                        and key not in self._shared.seen:
                    replayed = replayed + hit.usage
                    n_replayed += 1
                self._shared.seen.add(key)
        if n_replayed:
            self._charge_replay(replayed)
        elif all(cached):
            self.meter.record_cached(self.role)
        for start, count in _missing_runs(cached):
            sub = dataclasses.replace(
                request, n=count, seed=None if request.seed is None else request.seed + start)
            result = await self._paid_call(sub)
            per_sample = _split_usage(result.usage, count)
            for j in range(count):
                text = result.texts[j] if j < len(result.texts) else ""
                texts[start + j] = text
                usages[start + j] = per_sample[j]
                if cache is not None and text.strip():  # an empty reply is never kept
                    cache.put(keys[start + j], self.model, text, per_sample[j], self._shared.run_id)
                    self._shared.seen.add(keys[start + j])
        total = Usage()
        for u in usages:
            total = total + u
        return Completion(texts=[t or "" for t in texts], usage=total, model=self.model, cached=cached)

    def _from_cache_only(self, request: LMRequest, keys: list[str]) -> Completion:
        """Answer from the cache without charging or marking anything; a response this run paid for
        in an earlier session counts as missing (it was not cached when the run began)."""
        cache, own = self._shared.cache, self._shared.run_id
        hits = [cache.get(k) if cache is not None else None for k in keys] or [None]
        if any(h is None or (own is not None and h.origin == own) for h in hits):
            raise CacheMiss(f"{self.model}: response not in the cache")
        usage = Usage()
        for h in hits:
            usage = usage + h.usage  # type: ignore[union-attr]
        return Completion(texts=[h.text for h in hits], usage=usage, model=self.model,  # type: ignore[union-attr]
                          cached=[True] * len(hits))

    async def _paid_call(self, request: LMRequest) -> Completion:
        async with self._semaphore():
            # Checked after waiting for a slot, so queued calls see the budget as it is now.
            if self.budget is not None:
                self.budget.start_call()
            try:
                result = await self._retried(request)
            except BaseException as exc:
                if self.budget is not None:
                    self.budget.abort_call()
                if isinstance(exc, Exception):  # a cancellation is not a failed call
                    self.meter.record_failure(self.role)
                raise
        usage = self._priced(result.usage)
        result.usage = usage
        if self.budget is not None:
            self.budget.finish_call(usage)
        self.meter.record_paid(self.role, usage)
        return result

    async def _retried(self, request: LMRequest) -> Completion:
        try:
            return await self.retry.run(lambda: self._attempt(request),
                                        on_retry=lambda *_: self.meter.record_retry(self.role))
        except LMTransientError as exc:
            empty = exc if isinstance(exc, _EmptyCompletion) else exc.__cause__
            if isinstance(empty, _EmptyCompletion):
                return empty.completion  # empty on every attempt: that is the model's answer (not cached)
            raise

    async def _attempt(self, request: LMRequest) -> Completion:
        result = await self.provider.complete(request)
        if len(result.texts) < request.n:
            raise LMTransientError(f"{self.model} returned {len(result.texts)} of {request.n} samples")
        if any(not (t or "").strip() for t in result.texts[: request.n]):
            # An empty reply is usually a fault (a dropped generation, an overloaded server):
            # retried like one; and never cached (see complete), so a rerun asks again.
            raise _EmptyCompletion(result)
        return result

    async def aclose(self) -> None:
        """Close the provider's connections (HTTP clients); the client can't be used afterwards."""
        await self.provider.aclose()

    def _charge_replay(self, usage: Usage) -> None:
        """Count a response this run paid for in an earlier session as it was counted then."""
        if self.budget is not None:
            self.budget.start_call()  # raises where the original run stopped
            self.budget.finish_call(usage)
        self.meter.record_paid(self.role, usage, replayed=True)

    def _priced(self, usage: Usage) -> Usage:
        if usage.cost_usd is not None:
            return usage
        price = self.provider.price_per_token()
        if price is None:
            return usage
        cost = usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]
        return Usage(usage.prompt_tokens, usage.completion_tokens, cost)


class _EmptyCompletion(LMTransientError):
    """A reply with an empty sample, kept so it can be returned if every attempt is empty."""

    def __init__(self, completion: Completion) -> None:
        super().__init__(f"{completion.model or 'the model'} returned an empty completion")
        self.completion = completion


def _missing_runs(cached: list[bool]) -> list[tuple[int, int]]:
    """Contiguous runs of uncached sample indices as (start, length)."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(cached):
        if cached[i]:
            i += 1
            continue
        j = i
        while j < len(cached) and not cached[j]:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs


def _split_usage(usage: Usage, count: int) -> list[Usage]:
    if count == 1:
        return [usage]
    out = []
    for j in range(count):
        pt = usage.prompt_tokens // count + (1 if j < usage.prompt_tokens % count else 0)
        ct = usage.completion_tokens // count + (1 if j < usage.completion_tokens % count else 0)
        cost = None if usage.cost_usd is None else usage.cost_usd / count
        out.append(Usage(pt, ct, cost))
    return out
