"""Structured output through the LM layer: the schema on requests and in cache keys, each
provider's request, the enforceable subset, and complete_json's parse / repair / drop."""

from __future__ import annotations

import json

import pytest

from flowbot.lm import LMClient, LMPermanentError, LMRequest, ResponseCache, SchemaError, check_schema, complete_json
from flowbot.lm.cache import cache_key
from flowbot.lm.schema import schema_text, unsupported_parts
from flowbot.lm.litellm_provider import LiteLLMProvider, import_litellm
from flowbot.lm.structured import REPAIR_TEMPLATE, parse_reply
from flowbot.testing import OpenAITestServer, ScriptedLM

from .lm_helpers import KEY_ENV, fast_policy, user

# critique first, then one of two edits told apart by a const tag: the shape FlowBot's
# proposal schemas take
EDIT = {
    "type": "object",
    "properties": {
        "critique": {"type": "string", "maxLength": 200},
        "edit": {"anyOf": [
            {"type": "object", "properties": {"kind": {"const": "remove"},
                                              "node": {"enum": ["n1", "n2"]}},
             "required": ["kind", "node"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "add_tool"},
                                              "tool": {"enum": ["python", "calculator"]}},
             "required": ["kind", "tool"], "additionalProperties": False},
        ]},
    },
    "required": ["critique", "edit"],
    "additionalProperties": False,
}
ANSWER = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"], "additionalProperties": False}


# -- requests and cache keys ----------------------------------------------------------------------
def test_keys_of_requests_without_a_schema_are_unchanged():
    """Digests computed with the cache_key of before schemas existed: a frozen experiment's
    cache must keep serving the same entries."""
    r = LMRequest.of([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2? é"}],
                     temperature=0.7, max_tokens=64, seed=3, stop=["\n\n"])
    assert cache_key("local/qwen2.5-coder-1.5b", r, 0) == \
        "088309dbb5b40a57cf4ce48c7dce7ad56d853a4a3efbd56a969b934c3d743abd"
    assert cache_key("m@http://x/v1", LMRequest.of(user("hi")), 2) == \
        "28652e9e0508dc281d95fe08b7c5dc9388a7de5b93b417ebc250ce327997f65e"


def test_the_schema_is_part_of_the_key():
    plain = LMRequest.of(user("hi"), seed=1)
    with_edit = LMRequest.of(user("hi"), seed=1, schema=EDIT)
    assert with_edit.schema == schema_text(EDIT) and with_edit.json_schema == EDIT
    keys = {cache_key("m", r, 0) for r in (plain, with_edit, LMRequest.of(user("hi"), seed=1, schema=ANSWER))}
    assert len(keys) == 3
    assert cache_key("m", with_edit, 0) == cache_key("m", LMRequest.of(user("hi"), seed=1, schema=json.loads(json.dumps(EDIT))), 0)
    # key order is kept: it decides the order the grammar generates properties in
    reordered = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}}
    ordered = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    assert cache_key("m", LMRequest.of(user("x"), schema=reordered), 0) != \
        cache_key("m", LMRequest.of(user("x"), schema=ordered), 0)


def test_a_schema_that_is_not_json_is_refused():
    with pytest.raises(SchemaError, match="not JSON-serializable"):
        LMRequest.of(user("x"), schema={"type": "object", "default": {1, 2}})
    with pytest.raises(SchemaError, match="must be an object"):
        LMRequest.of(user("x"), schema=[1])  # type: ignore[arg-type]


async def test_client_passes_the_schema_also_for_missing_samples_and_caches_apart():
    lm_provider = ScriptedLM(default=lambda req, i: f"{'schema' if req.json_schema else 'free'} {i}")
    lm = LMClient(lm_provider, cache=ResponseCache())
    await lm.complete(user("q"), n=1, temperature=1.0, seed=5, schema=ANSWER)
    out = await lm.complete(user("q"), n=3, temperature=1.0, seed=5, schema=ANSWER)
    assert out.cached == [True, False, False]
    sub = lm_provider.calls[-1]
    assert (sub.n, sub.seed, sub.json_schema) == (2, 6, ANSWER)
    free = await lm.complete(user("q"), n=1, temperature=1.0, seed=5)  # not served the schema reply
    assert free.text == "free 0" and free.cached == [False]


# -- providers' requests --------------------------------------------------------------------------
async def test_openai_compat_sends_a_strict_json_schema_response_format(server, key_env, connect):
    lm = connect(server)
    assert lm.supports_schema
    await lm.complete(user("edit?"), schema=EDIT, max_tokens=50)
    await lm.complete(user("edit?"), max_tokens=50)
    titled = {**ANSWER, "title": "answer_v1"}
    await lm.complete(user("n?"), schema=titled)
    sent = server.response_formats
    assert sent[0] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": EDIT, "strict": True}}
    assert list(sent[0]["json_schema"]["schema"]["properties"]) == ["critique", "edit"]  # order kept
    assert sent[1] is None  # no schema, no response_format
    assert sent[2]["json_schema"]["name"] == "answer_v1"


async def test_openai_compat_without_schema_support_sends_none(server, key_env):
    from flowbot.lm.openai_compat import OpenAICompatProvider

    provider = OpenAICompatProvider("test-model", base_url=server.base_url, api_key_env=KEY_ENV,
                                    supports_schema=False)
    lm = LMClient(provider, retry=fast_policy())
    await lm.complete(user("n?"), schema=ANSWER)
    await provider.aclose()
    assert not lm.supports_schema and server.response_formats == [None]


async def test_the_test_server_rejects_a_malformed_response_format(key_env, connect):
    with OpenAITestServer() as srv:
        lm = connect(srv)
        lm.provider.extra_body = {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}}
        with pytest.raises(LMPermanentError, match="json_schema.name"):
            await lm.complete(user("x"))
        lm.provider.extra_body = {"response_format": {"type": "json_schema", "json_schema": {"name": "ok"}}}
        with pytest.raises(LMPermanentError, match="json_schema.schema"):
            await lm.complete(user("x"))
        assert srv.request_count == 2


async def test_litellm_sends_the_same_response_format(server, key_env):
    try:
        import_litellm()
    except LMPermanentError:
        pytest.skip("the hosted extra (litellm) is not installed")
    provider = LiteLLMProvider("openai/test-model", api_base=server.base_url, api_key_env=KEY_ENV, timeout=5.0)
    lm = LMClient(provider, retry=fast_policy())
    await lm.complete(user("edit?"), schema=EDIT)
    await lm.complete(user("edit?"))
    assert server.response_formats == [
        {"type": "json_schema", "json_schema": {"name": "reply", "schema": EDIT, "strict": True}}, None]
    # litellm's model map does not know this server's model, so replies are not trusted...
    assert provider.supports_schema is False
    # ...unless the caller says the model enforces schemas; a known model is looked up
    assert LiteLLMProvider("openai/test-model", supports_schema=True).supports_schema is True
    assert LiteLLMProvider("gpt-4o-mini").supports_schema is True


def test_only_enforcing_providers_claim_schema_support():
    from flowbot.lm.local import LlamaCppProvider

    assert ScriptedLM().supports_schema is False
    assert LlamaCppProvider("qwen2.5-coder-0.5b").supports_schema is True


# -- the enforceable subset -----------------------------------------------------------------------
def test_flowbots_schema_shapes_are_enforceable():
    assert unsupported_parts(EDIT, bounded=True) == []
    nested = {"type": "object", "$defs": {"step": {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": 80}}, "required": ["text"]}},
        "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "maxItems": 4},
                       "note": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]},
                       "when": {"type": "string", "format": "date"},
                       "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]}},
        "required": ["steps"], "additionalProperties": False, "description": "annotations are fine"}
    assert unsupported_parts(nested, bounded=True) == []
    assert unsupported_parts({"type": "object", "properties": {}}) == []  # only {} is allowed


@pytest.mark.parametrize("schema, complaint", [
    ({"type": "integer", "minimum": 0}, "/: 'minimum' is not enforced"),
    ({"type": "object", "properties": {"id": {"type": "string", "pattern": "^n[0-9]+$"}}}, "/properties/id: 'pattern'"),
    ({"type": ["string", "null"], "maxLength": 5}, "list of types"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required 'b' is not in properties"),
    ({"type": "object"}, "arbitrary keys"),
    ({"type": "object", "properties": {}, "additionalProperties": True}, "arbitrary keys"),
    ({"type": "array"}, "needs 'items'"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems'"),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}]}, "no 'type'"),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, "must point into"),
    ({"enum": ["a\\b"]}, "backslash"),
    ({"type": "string", "format": "email"}, "format 'email'"),
    ({"type": "object", "properties": {"a": True}}, "/properties/a: a subschema must be an object"),
    ({"description": "only words"}, "no 'type'"),
    ({"type": "strng"}, "no 'type'"),
])
def test_unenforceable_parts_are_named(schema, complaint):
    problems = unsupported_parts(schema)
    assert problems and any(complaint in p for p in problems), problems


def test_bounded_asks_for_max_length_and_max_items():
    loose = {"type": "object", "properties": {"why": {"type": "string"},
                                              "tags": {"type": "array", "items": {"enum": ["a"]}}}}
    assert unsupported_parts(loose) == []
    problems = unsupported_parts(loose, bounded=True)
    assert any("/properties/why: a free-text string needs maxLength" in p for p in problems)
    assert any("/properties/tags: a list needs maxItems" in p for p in problems)


def test_check_schema_rejects_malformed_and_unenforceable_schemas():
    check_schema(EDIT, bounded=True)
    with pytest.raises(SchemaError, match=r"invalid JSON schema at \$\.properties\.n\.type"):
        check_schema({"type": "object", "properties": {"n": {"type": "integr"}}})
    with pytest.raises(SchemaError, match=r"invalid JSON schema at \$\.required"):
        check_schema({"type": "object", "required": "answer"})
    with pytest.raises(SchemaError, match="'minimum' is not enforced"):
        check_schema({"type": "integer", "minimum": 1})
    check_schema({"type": "integer", "minimum": 1}, grammar=False)  # valid JSON Schema all the same


# -- parsing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '{"answer": 4}',
    '```json\n{"answer": 4}\n```',
    'Let me think [briefly]. The result:\n```\n{"answer": 4}\n```\nDone.',
    'Sure! {"answer": 4} is my reply.',
    'First {"answer": "x"}, no wait: {"answer": 4}',
])
def test_json_is_found_in_fences_and_prose(text):
    got = parse_reply(text, ANSWER)
    assert got.error is None and got.value == {"answer": 4}


@pytest.mark.parametrize("text, error, truncated", [
    ('{"answer": "four"}', "at $.answer: 'four' is not of type 'integer'", False),
    ('{"result": {"answer": 4}}', "'answer' is a required property", False),  # a nested piece is not the reply
    ('{"answer": 4,, }', "the JSON is malformed: Expecting property name", False),
    ("four", "no JSON value", False),
    ('{"answer": 4, "why": "because the', "cut off", True),
    ('Here [is] my answer: {"answer":', "cut off", True),
])
def test_invalid_replies_say_why(text, error, truncated):
    got = parse_reply(text, ANSWER)
    assert got.value is None and error in got.error and got.truncated is truncated


def test_raw_newlines_inside_strings_are_accepted():
    schema = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 20}}, "required": ["note"]}
    assert parse_reply('{"note": "two\nlines"}', schema).value == {"note": "two\nlines"}


# -- complete_json ------------------------------------------------------------------------------------
REPAIR_OPENING = REPAIR_TEMPLATE.split("{")[0]


def is_repair(req: LMRequest) -> bool:
    return req.messages[-1][1].startswith(REPAIR_OPENING)


async def test_valid_first_time():
    provider = ScriptedLM(default='{"answer": 4}')
    reply = await complete_json(LMClient(provider), user("2+2?"), ANSWER, max_tokens=20)
    assert (reply.status, reply.value, reply.ok, reply.errors) == ("valid", {"answer": 4}, True, [])
    assert reply.texts == ['{"answer": 4}'] and not reply.constrained
    (call,) = provider.calls
    assert call.json_schema == ANSWER and call.max_tokens == 20 and call.temperature == 0.0
    assert reply.usage.completion_tokens == 2


async def test_invalid_then_one_repair_quoting_the_error():
    provider = ScriptedLM([(is_repair, '{"answer": 4}')], default='The answer is {"answer": "4"}.')
    reply = await complete_json(LMClient(provider), user("2+2?"), ANSWER, max_tokens=20, seed=9)
    assert (reply.status, reply.value) == ("repaired", {"answer": 4})
    assert len(provider.calls) == 2 and len(reply.texts) == 2
    first, repair = provider.calls
    assert repair.messages[:-2] == first.messages
    assert repair.messages[-2] == ("assistant", 'The answer is {"answer": "4"}.')
    error = "the JSON is not valid at $.answer: '4' is not of type 'integer'"
    assert reply.errors == [error]
    assert repair.messages[-1] == ("user", REPAIR_TEMPLATE.format(error=error, schema=schema_text(ANSWER)))
    assert repair.json_schema == ANSWER and repair.seed == 9
    assert reply.usage.prompt_tokens == sum(len(" ".join(c for _, c in r.messages).split()) for r in provider.calls)


async def test_invalid_twice_is_dropped_without_raising():
    provider = ScriptedLM(default="I would rather not answer in JSON.")
    reply = await complete_json(LMClient(provider), user("2+2?"), ANSWER, max_tokens=20)
    assert (reply.status, reply.value, reply.ok) == ("dropped", None, False)
    assert reply.errors == ["it contains no JSON value."] * 2 and len(provider.calls) == 2


async def test_no_repair_when_asked_not_to():
    provider = ScriptedLM(default='{"answer": null}')
    reply = await complete_json(LMClient(provider), user("2+2?"), ANSWER, max_tokens=20, repair=False)
    assert reply.status == "dropped" and len(provider.calls) == 1


async def test_a_constrained_complete_but_invalid_reply_is_dropped_at_once():
    provider = ScriptedLM(default='{"answer": 1.5}', supports_schema=True)
    reply = await complete_json(LMClient(provider), user("2+2?"), ANSWER, max_tokens=20)
    assert reply.constrained and reply.status == "dropped" and len(provider.calls) == 1


async def test_a_cut_off_reply_is_repaired_even_when_constrained(key_env, connect):
    """The test server cuts replies at max_tokens words (finish_reason "length") like a real one."""
    schema = {"type": "object", "properties": {"why": {"type": "string", "maxLength": 200},
                                               "answer": {"type": "integer"}},
              "required": ["why", "answer"], "additionalProperties": False}

    def reply(body: dict) -> str:
        repairing = body["messages"][-1]["content"].startswith(REPAIR_OPENING)
        why = "short" if repairing else " ".join(["very"] * 30) + " long"
        return json.dumps({"why": why, "answer": 4})

    with OpenAITestServer(reply=reply) as srv:
        lm = connect(srv)
        got = await complete_json(lm, user("2+2?"), schema, max_tokens=12)
        assert got.constrained and got.truncated
        assert (got.status, got.value) == ("repaired", {"why": "short", "answer": 4})
        assert "cut off before the JSON closed (at most 12 tokens)" in got.errors[0]
        assert srv.response_formats[1]["json_schema"]["schema"] == schema  # the repair is constrained too


async def test_a_replay_from_the_cache_takes_the_same_decisions():
    cache = ResponseCache()
    provider = ScriptedLM([(is_repair, '{"answer": 4}')], default='{"answer": 4')
    first = await complete_json(LMClient(provider, cache=cache), user("2+2?"), ANSWER, max_tokens=20)
    again = await complete_json(LMClient(provider, cache=cache), user("2+2?"), ANSWER, max_tokens=20)
    assert first.status == again.status == "repaired" and first.truncated and again.truncated
    assert first.texts == again.texts and len(provider.calls) == 2  # the replay paid nothing


async def test_a_malformed_schema_fails_before_any_call():
    provider = ScriptedLM(default="{}")
    with pytest.raises(SchemaError, match="invalid JSON schema"):
        await complete_json(LMClient(provider), user("x"), {"type": "objekt"}, max_tokens=5)
    assert provider.calls == []
