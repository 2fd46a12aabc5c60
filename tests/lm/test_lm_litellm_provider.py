"""LiteLLMProvider inside LMClient: the real litellm code path against the local test server
(litellm targets an OpenAI-compatible base URL with model "openai/<name>" and api_base)."""

from __future__ import annotations

import sys

import pytest

from flowbot.lm import LMClient, LMPermanentError, LMRequest, LMTransientError
from flowbot.lm.litellm_provider import MISSING_EXTRA, LiteLLMProvider, import_litellm
from flowbot.testing import Fault, OpenAITestServer

from .lm_helpers import FAKE_KEY, KEY_ENV, fast_policy, user

try:  # through import_litellm, so litellm uses its bundled price map instead of fetching one
    litellm = import_litellm()
except LMPermanentError:
    pytest.skip("the hosted extra (litellm) is not installed", allow_module_level=True)


def hosted(server: OpenAITestServer, model: str = "openai/test-model", **kw) -> LMClient:
    provider = LiteLLMProvider(model, api_base=server.base_url, api_key_env=KEY_ENV, timeout=5.0)
    return LMClient(provider, retry=kw.pop("policy", None) or fast_policy(), **kw)


async def test_success_sends_parameters_and_reports_usage(server, key_env):
    out = await hosted(server).complete(user("two plus two"), n=2, temperature=0.5, seed=3,
                                        max_tokens=20, stop=["END"])
    assert out.texts == ["answer 0", "answer 1"]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 4)
    sent = server.requests[-1]
    assert sent["model"] == "test-model"  # litellm strips its routing prefix
    assert (sent["n"], sent["seed"], sent["temperature"], sent["max_tokens"], sent["stop"]) == (
        2, 3, 0.5, 20, ["END"])


async def test_missing_samples_are_fetched_when_the_server_ignores_n(key_env):
    with OpenAITestServer(reply=lambda body: f"seed {body.get('seed')}", honor_n=False) as srv:
        out = await hosted(srv).complete(user("hi"), n=3, temperature=1.0, seed=7)
        assert out.texts == ["seed 7", "seed 8", "seed 9"]
        assert srv.request_count == 3


async def test_429_is_retried_with_retry_after_reaching_the_policy(server, key_env):
    policy = fast_policy()
    server.fail_next(Fault.rate_limit(retry_after=0.1))
    out = await hosted(server, policy=policy).complete(user("hi"))
    assert out.text == "answer 0" and server.request_count == 2
    (_, retry_after, wait), = policy.waits
    assert retry_after == pytest.approx(0.1) and wait >= 0.1


@pytest.mark.parametrize("fault", [
    Fault.http(500), Fault.http(503), Fault.invalid_json(), Fault.missing_choices(), Fault.drop(),
], ids=["500", "503", "invalid-json", "missing-choices", "dropped-connection"])
async def test_transient_fault_then_success(server, key_env, fault):
    lm = hosted(server)
    server.fail_next(fault)
    out = await lm.complete(user("hi"))
    assert out.text == "answer 0" and server.request_count == 2
    assert lm.meter.snapshot()["task"].retries == 1


async def test_slow_response_beyond_attempt_timeout_is_retried(server, key_env):
    server.fail_next(Fault.slow(5.0))
    out = await hosted(server, policy=fast_policy(attempt_timeout=0.5)).complete(user("hi"))
    assert out.text == "answer 0" and server.request_count == 2


async def test_bad_key_fails_once_and_never_shows_the_key(key_env):
    with OpenAITestServer(api_key="sk-the-right-one") as srv:  # echoes the wrong key it got
        lm = hosted(srv)
        with pytest.raises(LMPermanentError) as info:
            await lm.complete(user("hi"))
        assert srv.request_count == 1
    msg = str(info.value)
    assert f"authentication failed for {srv.base_url}" in msg and KEY_ENV in msg
    assert FAKE_KEY not in msg and FAKE_KEY not in repr(info.value)
    assert info.value.__cause__ is None and FAKE_KEY not in repr(lm.provider)


async def test_unknown_model_fails_once_naming_model_and_url(key_env):
    with OpenAITestServer(models=["test-model"]) as srv:
        with pytest.raises(LMPermanentError, match=r"model 'openai/nope' not found at http://127"):
            await hosted(srv, model="openai/nope").complete(user("hi"))
        assert srv.request_count == 1


async def test_bad_request_carries_the_server_message(server, key_env):
    server.fail_next(Fault.http(400, "context length exceeded"))
    with pytest.raises(LMPermanentError, match="context length exceeded"):
        await hosted(server).complete(user("hi"))
    assert server.request_count == 1


async def test_persistent_failure_gives_up_after_max_attempts(key_env):
    with OpenAITestServer(fault_rule=lambda body: Fault.http(502)) as srv:
        with pytest.raises(LMTransientError, match="gave up after 2 attempts"):
            await hosted(srv, policy=fast_policy(max_attempts=2)).complete(user("hi"))
        assert srv.request_count == 2


def test_price_comes_from_litellm_price_map():
    entry = litellm.model_cost["gpt-4o-mini"]
    expected = (entry["input_cost_per_token"], entry["output_cost_per_token"])
    assert LiteLLMProvider("gpt-4o-mini").price_per_token() == pytest.approx(expected)
    assert LiteLLMProvider("openai/no-such-model-xyz").price_per_token() is None
    assert LiteLLMProvider("gpt-4o-mini", price_per_token=(1.0, 2.0)).price_per_token() == (1.0, 2.0)


async def test_known_price_is_charged_to_the_meter_and_budget(server, key_env):
    lm = hosted(server, model="openai/gpt-4o-mini")
    price = lm.provider.price_per_token()
    assert price is not None
    out = await lm.complete(user("one two three"))
    assert out.usage.cost_usd == pytest.approx(3 * price[0] + 2 * price[1])
    assert lm.meter.to_dict()["task"]["cost_usd"] == pytest.approx(out.usage.cost_usd, abs=1e-6)


async def test_missing_extra_gives_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "litellm", None)  # what an absent package looks like
    with pytest.raises(LMPermanentError) as info:
        import_litellm()
    assert str(info.value) == MISSING_EXTRA
    provider = LiteLLMProvider("gpt-4o-mini")
    with pytest.raises(LMPermanentError, match=r"pip install 'flowbot\[hosted\]'"):
        await provider.complete(LMRequest.of(user("hi")))
