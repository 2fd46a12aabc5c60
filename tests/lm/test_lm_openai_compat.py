"""OpenAICompatProvider inside LMClient, against a real local HTTP server with injected faults."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flowbot.lm import (
    Budget, BudgetExceeded, LMClient, LMPermanentError, LMRequest, LMTransientError, ResponseCache,
)
from flowbot.lm.openai_compat import OpenAICompatProvider, parse_retry_after
from flowbot.testing import Fault, OpenAITestServer

from .lm_helpers import FAKE_KEY, KEY_ENV, fast_policy, has_aiohttp, make_client, user


# Both HTTP transports of the openai client must map faults the same way.
BACKENDS = ["httpx", pytest.param("aiohttp", marks=pytest.mark.skipif(
    not has_aiohttp(), reason="aiohttp is not installed"))]


# -- success paths -----------------------------------------------------------------------------
async def test_success_returns_text_usage_and_sends_parameters(server, key_env, connect):
    lm = connect(server)
    out = await lm.complete(user("what is two plus two"), temperature=0.7, max_tokens=50,
                            stop=["\n\n"], seed=11)
    assert out.texts == ["answer 0"]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (5, 2)  # server counts words
    sent = server.requests[-1]
    assert sent["model"] == "test-model"
    assert sent["messages"] == [{"role": "user", "content": "what is two plus two"}]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["seed"]) == (0.7, 50, ["\n\n"], 11)
    assert "n" not in sent  # n=1 is left to the server default


async def test_key_comes_from_the_named_environment_variable(key_env, connect):
    with OpenAITestServer(api_key=FAKE_KEY) as srv:
        out = await connect(srv).complete(user("hi"))
    assert out.text == "ok"


async def test_unset_key_sends_a_placeholder_that_local_servers_accept(server, monkeypatch, connect):
    monkeypatch.delenv("FLOWBOT_UNSET_KEY", raising=False)
    out = await connect(server, key_env="FLOWBOT_UNSET_KEY").complete(user("hi"))
    assert out.text == "answer 0"


async def test_n_samples_in_one_request_when_the_server_honours_n(server, key_env, connect):
    out = await connect(server).complete(user("hi"), n=3, temperature=1.0, seed=5)
    assert out.texts == ["answer 0", "answer 1", "answer 2"]
    assert server.request_count == 1 and server.requests[0]["n"] == 3


async def test_missing_samples_are_fetched_when_the_server_ignores_n(key_env, connect):
    with OpenAITestServer(reply=lambda body: f"seed {body.get('seed')}", honor_n=False) as srv:
        out = await connect(srv).complete(user("hi"), n=3, temperature=1.0, seed=5)
        assert out.texts == ["seed 5", "seed 6", "seed 7"]  # sample i uses seed + i
        assert [r.get("n", 1) for r in srv.requests] == [3, 2, 1]
        assert out.usage.prompt_tokens == 3  # one word of prompt, paid by each of 3 requests


async def test_missing_usage_is_estimated_and_counted(key_env, connect):
    with OpenAITestServer(reply="a reply of some length", report_usage=False) as srv:
        lm = connect(srv)
        out = await lm.complete(user("x" * 40))
    assert out.usage.prompt_tokens == 10  # ~4 characters per token
    assert out.usage.completion_tokens > 0
    assert lm.provider.estimated_usage_calls == 1


def test_provider_works_across_fresh_event_loops(server, key_env):
    """The sync API runs each call in its own loop; the provider must not reuse a dead client."""
    lm = make_client(server)  # each asyncio.run closes the client it made
    first = asyncio.run(lm.complete(user("one")))
    second = asyncio.run(lm.complete(user("two")))
    assert (first.text, second.text) == ("answer 0", "answer 0")
    assert server.request_count == 2


# -- transient faults are retried ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
async def test_429_is_retried_and_retry_after_is_a_lower_bound_on_the_wait(server, key_env, backend, connect):
    policy = fast_policy()
    lm = connect(server, policy=policy, http_backend=backend)
    server.fail_next(Fault.rate_limit(retry_after=0.2))
    out = await lm.complete(user("hi"))
    assert out.text == "answer 0"
    assert server.request_count == 2
    (attempt, retry_after, wait), = policy.waits
    assert retry_after == pytest.approx(0.2)  # the header reached the policy
    assert wait >= 0.2  # and bounded the wait from below (jitter alone is at most 0.01 here)
    assert lm.meter.snapshot()["task"].retries == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fault", [
    Fault.http(500), Fault.http(503), Fault.http(502), Fault.invalid_json(),
    Fault.missing_choices(), Fault.drop(),
], ids=["500", "503", "502", "invalid-json", "missing-choices", "dropped-connection"])
async def test_transient_fault_then_success(server, key_env, fault, backend, connect):
    lm = connect(server, http_backend=backend)
    server.fail_next(fault)
    out = await lm.complete(user("hi"))
    assert out.text == "answer 0"
    assert server.request_count == 2
    usage = lm.meter.snapshot()["task"]
    assert (usage.calls, usage.retries, usage.failed_calls) == (1, 1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_slow_response_beyond_attempt_timeout_is_retried(server, key_env, backend, connect):
    lm = connect(server, policy=fast_policy(attempt_timeout=0.5), http_backend=backend)
    server.fail_next(Fault.slow(5.0))
    out = await lm.complete(user("hi"))
    assert out.text == "answer 0"
    assert server.request_count == 2


async def test_always_slow_gives_up_with_a_clear_error(key_env, connect):
    with OpenAITestServer(fault_rule=lambda body: Fault.slow(5.0)) as srv:
        policy = fast_policy(attempt_timeout=0.4, max_attempts=2)
        lm = connect(srv, policy=policy)
        with pytest.raises(LMTransientError, match=r"no answer within 0.4 s after 2 attempts"):
            await lm.complete(user("hi"))
        # two attempts, one wait between them (counted by the client: on a loaded machine an attempt
        # can time out before its request even reaches the server)
        assert len(policy.waits) == 1 and 1 <= srv.request_count <= 2
    assert lm.meter.snapshot()["task"].failed_calls == 1


async def test_persistent_5xx_gives_up_after_max_attempts(key_env, connect):
    with OpenAITestServer(fault_rule=lambda body: Fault.http(503, "overloaded")) as srv:
        lm = connect(srv, policy=fast_policy(max_attempts=3))
        with pytest.raises(LMTransientError, match=r"gave up after 3 attempts.*503.*overloaded"):
            await lm.complete(user("hi"))
        assert srv.request_count == 3


async def test_connection_refused_is_transient_and_names_the_url(key_env):
    with OpenAITestServer() as srv:
        url = srv.base_url
    provider = OpenAICompatProvider("test-model", base_url=url, api_key_env=key_env)
    with pytest.raises(LMTransientError, match=f"connection to {url} failed"):
        await provider.complete(LMRequest.of(user("hi")))
    await provider.aclose()


# -- permanent errors fail at once ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
async def test_bad_key_fails_at_once_without_a_retry_storm(key_env, backend, connect):
    with OpenAITestServer(api_key="sk-the-right-one") as srv:
        lm = connect(srv, http_backend=backend)
        with pytest.raises(LMPermanentError) as info:
            await lm.complete(user("hi"))
        assert srv.request_count == 1
    msg = str(info.value)
    assert f"authentication failed for {srv.base_url}" in msg
    assert f"check the {KEY_ENV} environment variable" in msg
    assert lm.meter.snapshot()["task"].failed_calls == 1


async def test_bad_key_message_says_when_the_variable_is_unset(monkeypatch, connect):
    monkeypatch.delenv("FLOWBOT_UNSET_KEY", raising=False)
    with OpenAITestServer(api_key="sk-the-right-one") as srv:
        with pytest.raises(LMPermanentError, match=r"FLOWBOT_UNSET_KEY environment variable \(it is not set\)"):
            await connect(srv, key_env="FLOWBOT_UNSET_KEY").complete(user("hi"))


async def test_unknown_model_names_model_and_url_with_one_request(key_env, connect):
    with OpenAITestServer(models=["test-model"]) as srv:
        lm = connect(srv, model="no-such-model")
        with pytest.raises(LMPermanentError) as info:
            await lm.complete(user("hi"))
        assert srv.request_count == 1
    assert "model 'no-such-model' not found at " + srv.base_url in str(info.value)


async def test_bad_request_carries_the_server_message(server, key_env, connect):
    server.fail_next(Fault.http(400, "max_tokens is too large: 99999999"))
    with pytest.raises(LMPermanentError, match="max_tokens is too large"):
        await connect(server).complete(user("hi"))
    assert server.request_count == 1


async def test_exhausted_quota_429_is_permanent(server, key_env, connect):
    server.fail_next(Fault.http(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(LMPermanentError, match="quota exhausted"):
        await connect(server).complete(user("hi"))
    assert server.request_count == 1


async def test_api_key_never_leaks(key_env, caplog, connect):
    caplog.set_level(logging.DEBUG)
    # This server echoes the key it was sent in its 401 body, as some servers do.
    with OpenAITestServer(api_key="sk-the-right-one") as srv:
        lm = connect(srv)
        with pytest.raises(LMPermanentError) as auth:
            await lm.complete(user("hi"))
        assert srv.requests  # the key did reach the server, so the echo contained it
        srv.api_key = None
        srv.fail_next(*[Fault.http(503, f"upstream rejected {FAKE_KEY}")] * 4)
        with pytest.raises(LMTransientError) as transient:
            await lm.complete(user("again"))
    texts = [str(auth.value), repr(auth.value), str(transient.value), repr(transient.value),
             repr(lm.provider), str(vars(lm.provider)), caplog.text]
    for exc in (auth.value, transient.value):
        cause = exc.__cause__
        while cause is not None:  # the whole chain a traceback would print
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
    assert "***" in str(auth.value)  # the echoed key was there, and was scrubbed
    assert not any(FAKE_KEY in t for t in texts)


# -- LMClient features against the real transport ---------------------------------------------------
async def test_concurrency_limit_is_honoured(key_env, connect):
    with OpenAITestServer(latency_s=0.05) as srv:
        lm = connect(srv, max_concurrency=3)
        await asyncio.gather(*(lm.complete(user(f"q{i}")) for i in range(12)))
        assert srv.request_count == 12
        assert srv.max_in_flight == 3  # reached, never exceeded


async def test_server_does_not_serialize_concurrent_requests(key_env, connect):
    with OpenAITestServer(latency_s=0.25) as srv:
        lm = connect(srv, max_concurrency=32)
        await asyncio.gather(*(lm.complete(user(f"q{i}")) for i in range(32)))
        assert srv.max_in_flight > 16


async def test_cache_serves_repeats_and_fetches_only_missing_samples(server, key_env, connect):
    lm = connect(server, cache=ResponseCache())
    first = await lm.complete(user("hi"))
    again = await lm.complete(user("hi"))
    assert server.request_count == 1
    assert again.texts == first.texts and again.cached == [True]
    three = await lm.complete(user("hi"), n=3)
    assert server.request_count == 2
    assert server.requests[-1]["n"] == 2 and server.requests[-1]["seed"] == 1  # samples 1 and 2
    assert three.cached == [True, False, False]
    assert three.texts == ["answer 0", "answer 0", "answer 1"]


async def test_budget_stops_before_the_request_is_sent(server, key_env, connect):
    lm = connect(server, budget=Budget(max_calls=2))
    await lm.complete(user("a"))
    await lm.complete(user("b"))
    with pytest.raises(BudgetExceeded, match="2 calls"):
        await lm.complete(user("c"))
    assert server.request_count == 2


async def test_meter_counts_per_role(server, key_env, connect):
    task = connect(server)
    optimizer = task.with_role("optimizer")
    await task.complete(user("one two three"))
    await optimizer.complete(user("four five"))
    await optimizer.complete(user("six"))
    usage = task.meter.snapshot()
    assert (usage["task"].calls, usage["task"].prompt_tokens, usage["task"].completion_tokens) == (1, 3, 2)
    assert (usage["optimizer"].calls, usage["optimizer"].prompt_tokens) == (2, 3)


async def test_known_price_is_charged_to_the_meter(server, key_env):
    provider = OpenAICompatProvider("test-model", base_url=server.base_url, api_key_env=key_env,
                                    price_per_token=(1e-6, 2e-6))
    lm = LMClient(provider, retry=fast_policy())
    out = await lm.complete(user("one two three"))
    await provider.aclose()
    assert out.usage.cost_usd == pytest.approx(3 * 1e-6 + 2 * 2e-6)


# -- helpers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, expected", [
    ({"retry-after": "2"}, 2.0),
    ({"retry-after": "0.25"}, 0.25),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_parse_retry_after(headers, expected):
    now = 1445412480.0  # 2015-10-21 07:28:00 GMT
    assert parse_retry_after(headers, now=now) == expected


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="http_backend must be"):
        OpenAICompatProvider("m", base_url="http://localhost:8000/v1", http_backend="curl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_url must start with http"):
        OpenAICompatProvider("m", base_url="localhost:8000/v1")
    with pytest.raises(ValueError, match="needs a model name"):
        OpenAICompatProvider("", base_url="http://localhost:8000/v1")
