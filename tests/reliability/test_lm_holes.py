"""Issue 13, holes 3 and 5: empty completions are transient faults; API keys never leak, in any form."""

from __future__ import annotations

import json
import random
import urllib.parse

import pytest

from flowbot.lm import LMClient, LMPermanentError, LMTransientError, ResponseCache, RetryPolicy
from flowbot.lm.openai_compat import OpenAICompatProvider
from flowbot.testing import ScriptedLM
from flowbot.testing import Fault, OpenAITestServer

KEY = "sk-planted-0123456789abcdefSECRET"
ENV = "FLOWBOT_RELIABILITY_KEY"


def fast(**kw) -> RetryPolicy:
    return RetryPolicy(**{"max_attempts": 4, "base_delay": 0.001, "max_delay": 0.01,
                          "attempt_timeout": 5.0, "rng": random.Random(0), **kw})


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- hole 3: empty completions ---------------------------------------------------------------------
async def test_an_empty_completion_is_retried_and_the_retry_is_what_is_cached(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    provider = ScriptedLM(queue=["", "  \n", "42"])
    lm = LMClient(provider, cache=cache, retry=fast())
    out = await lm.complete(user("6*7?"))
    assert out.text == "42"
    assert len(provider.calls) == 3 and lm.meter.snapshot()["task"].retries == 2
    again = await LMClient(ScriptedLM(), cache=cache, retry=fast()).complete(user("6*7?"))
    assert again.text == "42" and again.cached == [True]  # the answer, not the empty reply


async def test_an_always_empty_model_is_retried_then_answered_and_caches_nothing(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    provider = ScriptedLM(default="")
    lm = LMClient(provider, cache=cache, retry=fast())
    out = await lm.complete(user("hi"))
    assert out.text == "" and len(provider.calls) == 4  # every attempt of the policy was made
    assert len(cache) == 0  # a rerun asks again
    await lm.complete(user("hi"))
    assert len(provider.calls) == 8


async def test_an_empty_sample_among_several_is_a_fault_too():
    provider = ScriptedLM(queue=["a", "", "a", "b"])
    out = await LMClient(provider, retry=fast()).complete(user("hi"), n=2, temperature=1.0)
    assert out.texts == ["a", "b"] and len(provider.calls) == 2


async def test_an_empty_http_answer_is_retried(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with OpenAITestServer(reply="fine") as srv:
        srv.fail_next(Fault.empty())
        lm = LMClient(OpenAICompatProvider("m", base_url=srv.base_url, api_key_env=ENV), retry=fast())
        out = await lm.complete(user("hi"))
        assert out.text == "fine" and srv.statuses == [200, 200]
        await lm.aclose()


# -- hole 5: API keys ------------------------------------------------------------------------------
def _texts_of(exc: BaseException) -> list[str]:
    """Everything a traceback or an error field could show of ``exc`` and its causes."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return out


def _leaks(texts: list[str], key: str) -> list[str]:
    forms = {key, key.strip(), repr(key)[1:-1], json.dumps(key)[1:-1]}
    return [t for t in texts for f in forms if f in t]


@pytest.mark.parametrize("raw", [KEY + "\n", KEY + " ", "\t" + KEY + "\r\n"])
async def test_a_key_with_surrounding_whitespace_is_stripped_on_read(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    with OpenAITestServer(reply="fine", api_key=KEY) as srv:
        lm = LMClient(OpenAICompatProvider("m", base_url=srv.base_url, api_key_env=ENV), retry=fast())
        assert (await lm.complete(user("hi"))).text == "fine"
        assert srv.statuses == [200]
        await lm.aclose()


async def test_a_key_no_header_can_carry_is_a_configuration_error_sent_nowhere(monkeypatch):
    monkeypatch.setenv(ENV, KEY[:10] + "\n" + KEY[10:])
    with OpenAITestServer(reply="fine") as srv:
        lm = LMClient(OpenAICompatProvider("m", base_url=srv.base_url, api_key_env=ENV), retry=fast())
        with pytest.raises(LMPermanentError, match=ENV) as info:
            await lm.complete(user("hi"))
        assert srv.request_count == 0  # failed at once: nothing sent, nothing retried
    assert lm.meter.snapshot()["task"].retries == 0
    assert not _leaks(_texts_of(info.value), KEY[:10] + "\n" + KEY[10:])


@pytest.mark.parametrize("raw", [KEY, KEY + "\n"])
async def test_a_key_echoed_in_error_bodies_is_redacted_in_every_form(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    with OpenAITestServer(reply="fine", api_key="sk-the-right-one-000000") as srv:
        lm = LMClient(OpenAICompatProvider("m", base_url=srv.base_url, api_key_env=ENV), retry=fast())
        with pytest.raises(LMPermanentError) as auth:  # the 401 body echoes the key it got
            await lm.complete(user("hi"))
        srv.api_key = None
        srv.fail_next(*[Fault.echo_headers(503)] * 4)  # a proxy repeating the request headers
        with pytest.raises(LMTransientError) as echoed:
            await lm.complete(user("again"))
        await lm.aclose()
    texts = _texts_of(auth.value) + _texts_of(echoed.value)
    assert "***" in str(auth.value) and "***" in str(echoed.value)  # the key was there, scrubbed
    assert not _leaks(texts, raw)


def test_redact_covers_escaped_forms():
    from flowbot.lm.redact import redact

    raw = "sk-x/y+z=" + KEY + "\n"  # URL-unsafe characters too
    text = f"b'Bearer {raw.strip()}\\n' {json.dumps({'k': raw})} {repr(raw)} {urllib.parse.quote(raw, safe='')}"
    assert "SECRET" in text and "SECRET" not in redact(text, [raw])


def test_litellm_key_is_stripped_and_checked(monkeypatch):
    from flowbot.lm.litellm_provider import LiteLLMProvider

    monkeypatch.setenv(ENV, KEY + "\n")
    assert LiteLLMProvider("openai/m", api_base="http://127.0.0.1:9/v1", api_key_env=ENV)._key() == KEY
    monkeypatch.setenv(ENV, KEY[:5] + "\n" + KEY[5:])
    with pytest.raises(LMPermanentError, match=ENV):
        LiteLLMProvider("openai/m", api_base="http://127.0.0.1:9/v1", api_key_env=ENV)._key()
