"""LMClient, the response cache, budgets, the meter and RetryPolicy, with in-process providers."""

from __future__ import annotations

import asyncio
import random

import pytest

from flowbot.lm import (
    Budget, BudgetExceeded, Completion, LMClient, LMPermanentError, LMRequest, LMTransientError, Provider,
    ResponseCache, RetryPolicy, Usage,
)
from flowbot.lm.cache import cache_key
from flowbot.testing import ScriptedLM

from .lm_helpers import user

FAST = dict(base_delay=0.001, max_delay=0.01, rng=random.Random(0))


class Flaky(Provider):
    """Fails with the queued errors first, then answers 'fine'."""

    model = "flaky"

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def complete(self, request: LMRequest) -> Completion:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Completion(texts=["fine"] * request.n, usage=Usage(2, 1), model=self.model)


class Short(Provider):
    """Always returns one sample whatever n asks."""

    model = "short"

    async def complete(self, request: LMRequest) -> Completion:
        return Completion(texts=["one"], usage=Usage(1, 1), model=self.model)


# -- cache -----------------------------------------------------------------------------------------
def test_cache_key_depends_on_everything_that_changes_the_answer():
    base = LMRequest.of(user("hi"), temperature=0.0, seed=1)
    key = cache_key("m", base, 0)
    assert key == cache_key("m", LMRequest.of(user("hi"), temperature=0.0, seed=1), 0)
    variants = [
        cache_key("other", base, 0), cache_key("m", base, 1),
        cache_key("m", LMRequest.of(user("hi!"), seed=1), 0),
        cache_key("m", LMRequest.of(user("hi"), temperature=0.5, seed=1), 0),
        cache_key("m", LMRequest.of(user("hi"), seed=2), 0),
        cache_key("m", LMRequest.of(user("hi"), seed=1, max_tokens=9), 0),
        cache_key("m", LMRequest.of(user("hi"), seed=1, stop=["x"]), 0),
    ]
    assert key not in variants and len(set(variants)) == len(variants)


async def test_cache_persists_across_clients_so_a_rerun_pays_nothing(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = ScriptedLM(default=lambda req, i: f"sample {i}")
    out1 = await LMClient(first, cache=ResponseCache(path)).complete(user("q"), n=2, temperature=1.0)
    again = ScriptedLM(default="never used")
    lm2 = LMClient(again, cache=ResponseCache(path))
    out2 = await lm2.complete(user("q"), n=2, temperature=1.0)
    assert out2.texts == out1.texts == ["sample 0", "sample 1"]
    assert again.calls == [] and out2.cached == [True, True]
    assert lm2.meter.snapshot()["task"].cached_calls == 1


async def test_more_samples_later_pays_only_for_the_new_ones():
    lm_provider = ScriptedLM(default=lambda req, i: f"s{req.seed}+{i}")
    lm = LMClient(lm_provider, cache=ResponseCache())
    await lm.complete(user("q"), n=3, seed=10, temperature=1.0)
    out = await lm.complete(user("q"), n=5, seed=10, temperature=1.0)
    assert [r.n for r in lm_provider.calls] == [3, 2]
    assert lm_provider.calls[-1].seed == 13  # samples 3 and 4 start at seed + 3
    assert out.cached == [True, True, True, False, False]


# -- budget and meter ------------------------------------------------------------------------------
async def test_call_budget_is_exact_under_concurrency():
    provider = ScriptedLM(default="x")
    lm = LMClient(provider, budget=Budget(max_calls=4), max_concurrency=8)
    results = await asyncio.gather(*(lm.complete(user(f"q{i}")) for i in range(10)),
                                   return_exceptions=True)
    assert sum(isinstance(r, Completion) for r in results) == 4
    assert all(isinstance(r, BudgetExceeded) for r in results if not isinstance(r, Completion))
    assert len(provider.calls) == 4


async def test_token_and_dollar_budgets_stop_the_next_call():
    priced = ScriptedLM(default="a b c d", price_per_token=(0.01, 0.02))
    lm = LMClient(priced, budget=Budget(max_usd=0.05))
    await lm.complete(user("one two"))  # 2*0.01 + 4*0.02 = 0.10 >= 0.05
    with pytest.raises(BudgetExceeded, match=r"\$0.05"):
        await lm.complete(user("more"))
    tokens = LMClient(ScriptedLM(default="a b c"), budget=Budget(max_tokens=5))
    await tokens.complete(user("one two three"))
    with pytest.raises(BudgetExceeded, match="5 tokens"):
        await tokens.complete(user("again"))


async def test_child_budget_charges_its_parent():
    parent = Budget(max_calls=3)
    child = parent.child("candidate", max_calls=10)
    lm = LMClient(ScriptedLM(default="x"), budget=child)
    for i in range(3):
        await lm.complete(user(f"q{i}"))
    assert parent.spent.calls == 3 and child.spent.calls == 3
    with pytest.raises(BudgetExceeded, match="run budget of 3 calls"):
        await lm.complete(user("q4"))


async def test_failed_call_returns_its_budget_reservation():
    budget = Budget(max_calls=2)
    lm = LMClient(Flaky(LMPermanentError("bad model")), budget=budget, retry=RetryPolicy(**FAST))
    with pytest.raises(LMPermanentError):
        await lm.complete(user("q"))
    assert budget.remaining_calls() == 2
    assert lm.meter.snapshot()["task"].failed_calls == 1


async def test_meter_separates_roles_and_knows_when_prices_are_unknown():
    lm = LMClient(ScriptedLM(default="a b"))
    judge = lm.with_role("judge")
    await lm.complete(user("x y z"))
    await judge.complete(user("w"))
    usage = lm.meter.to_dict()
    task = {k: usage["task"][k] for k in ("calls", "failed_calls", "prompt_tokens", "completion_tokens", "cost_usd")}
    assert task == {"calls": 1, "failed_calls": 0, "prompt_tokens": 3, "completion_tokens": 2, "cost_usd": None}
    assert usage["judge"]["prompt_tokens"] == 1
    assert lm.meter.total().calls == 2


# -- retries ----------------------------------------------------------------------------------------
def test_delay_is_jittered_below_the_cap_and_at_least_retry_after():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, rng=random.Random(1))
    waits = [policy.delay(attempt, None) for attempt in range(8) for _ in range(20)]
    assert all(0 <= w <= 4.0 for w in waits) and len(set(waits)) > 100  # jitter spreads clients
    assert all(policy.delay(a, 3.0) >= 3.0 for a in range(5))
    assert policy.delay(0, 100.0) == 100.0  # a server's Retry-After wins over the backoff cap ...
    assert policy.delay(0, 1e6) == policy.max_retry_after  # ... up to max_retry_after


async def test_transient_errors_are_retried_and_counted():
    provider = Flaky(LMTransientError("429"), LMTransientError("503"))
    lm = LMClient(provider, retry=RetryPolicy(max_attempts=3, **FAST))
    out = await lm.complete(user("q"))
    assert out.text == "fine" and provider.calls == 3
    assert lm.meter.snapshot()["task"].retries == 2


async def test_permanent_errors_are_never_retried():
    provider = Flaky(LMPermanentError("unknown model"))
    lm = LMClient(provider, retry=RetryPolicy(max_attempts=5, **FAST))
    with pytest.raises(LMPermanentError, match="unknown model"):
        await lm.complete(user("q"))
    assert provider.calls == 1


async def test_giving_up_names_the_attempts_and_the_last_error():
    provider = Flaky(*[LMTransientError("server overloaded")] * 3)
    lm = LMClient(provider, retry=RetryPolicy(max_attempts=3, **FAST))
    with pytest.raises(LMTransientError, match="gave up after 3 attempts: server overloaded"):
        await lm.complete(user("q"))


# -- regressions ----------------------------------------------------------------------------------
async def test_short_completion_does_not_leak_a_budget_reservation():
    budget = Budget(max_calls=3)
    lm = LMClient(Short(), budget=budget, retry=RetryPolicy(max_attempts=1, **FAST))
    with pytest.raises(LMTransientError):
        await lm.complete(user("q"), n=2)
    assert budget.remaining_calls() == 3


def test_a_single_stop_string_is_one_stop_sequence():
    assert LMRequest.of(user("q"), stop="END").stop == ("END",)
