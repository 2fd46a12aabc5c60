"""The embedded provider's structured output without a model: the grammar llama-cpp-python builds
from a schema, and that it reaches create_chat_completion as ``grammar=`` (a fake Llama)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from flowbot.lm import LMClient, LMPermanentError, complete_json  # noqa: E402
from flowbot.lm.local import LlamaCppProvider
from flowbot.lm.local.engine import compile_grammar
from flowbot.lm.local.engine import Engine  # noqa: E402
from flowbot.lm.schema import schema_text  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "critique": {"type": "string", "maxLength": 120},
        "kind": {"enum": ["remove", "add_tool"]},
        "tool": {"anyOf": [{"const": "python"}, {"type": "null"}]},
    },
    "required": ["critique", "kind"],
    "additionalProperties": False,
}


class FakeLlama:
    """Records the keyword arguments of each chat completion and answers with ``reply``."""

    def __init__(self, reply: str = '{"critique": "ok", "kind": "remove"}') -> None:
        self.reply = reply
        self.calls: list[dict[str, Any]] = []
        self.forgotten = 0

    def create_chat_completion(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        return {"choices": [{"message": {"content": self.reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5}}

    def forget_reuse(self) -> None:
        self.forgotten += 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    """A provider whose loaded model is a FakeLlama (llama.cpp's perf counters read as zero)."""
    monkeypatch.setattr(Engine, "perf", lambda self: (0, 0.0, 0.0))
    provider = LlamaCppProvider("qwen2.5-coder-0.5b")
    llama = FakeLlama()
    engine = Engine(provider.settings(), llama, ThreadPoolExecutor(max_workers=1))
    provider._engine = engine
    yield provider, llama, engine
    engine.executor.shutdown(wait=True)


def test_the_grammar_generates_properties_in_schema_order():
    gbnf = compile_grammar(schema_text(SCHEMA))._grammar
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    # required properties in the order listed, then the optional one; nothing else
    assert rules["root"].startswith('"{" space critique-kv "," space kind-kv')
    assert "tool-kv" in rules["root"] and "additional" not in gbnf
    assert rules["kind"] == '"\\"remove\\"" | "\\"add_tool\\""'
    assert rules["critique"].count("char") == 120  # maxLength bounds the string


async def test_the_grammar_is_passed_explicitly_and_compiled_once(fake):
    provider, llama, engine = fake
    lm = LMClient(provider)
    reply = await complete_json(lm, [{"role": "user", "content": "critique"}], SCHEMA, max_tokens=64)
    assert reply.status == "valid" and reply.constrained
    await lm.complete([{"role": "user", "content": "again"}], schema=SCHEMA, max_tokens=64)
    await lm.complete([{"role": "user", "content": "free text"}], max_tokens=64)
    first, second, free = llama.calls
    assert "grammar" in first and first["grammar"] is second["grammar"]  # cached on the engine
    assert first["grammar"]._grammar == compile_grammar(schema_text(SCHEMA))._grammar
    assert "grammar" not in free and "response_format" not in first
    assert list(engine.grammars) == [schema_text(SCHEMA)]


async def test_an_unenforceable_schema_is_refused_before_decoding(fake):
    provider, llama, _ = fake
    lm = LMClient(provider)
    bad = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}}, "required": ["n"]}
    with pytest.raises(LMPermanentError, match=r"cannot enforce this JSON schema: /properties/n: 'maximum'"):
        await lm.complete([{"role": "user", "content": "n?"}], schema=bad)
    assert llama.calls == []
    usage = lm.meter.snapshot()["task"]
    assert (usage.failed_calls, usage.retries) == (1, 0)  # a permanent error: not retried


def test_converter_errors_become_one_clear_line(monkeypatch):
    import llama_cpp

    def broken(schema: str, verbose: bool = True) -> Any:
        raise AssertionError("Unrecognized schema: {...}")

    monkeypatch.setattr(llama_cpp.LlamaGrammar, "from_json_schema", staticmethod(broken))
    with pytest.raises(LMPermanentError, match="cannot build a grammar from the JSON schema: AssertionError: Unrecognized"):
        compile_grammar(schema_text(SCHEMA))
