"""The local provider's behaviour that needs no real model: resolution, gating, errors."""

from __future__ import annotations

import os
import sys

import pytest

from flowbot.lm.base import LMPermanentError
from flowbot.lm.local import (
    LlamaCppProvider, ModelFetchError, UnknownModelError, is_local_model, loaded_engines, model_path, pull,
    resolve_local_model,
)
from flowbot.lm.local.engine import MISSING_EXTRA, physical_cores
from flowbot.lm.local.engine import check_gguf, default_threads


def test_non_local_specs_resolve_to_none():
    for spec in ("gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3-5-haiku", "scripted"):
        assert not is_local_model(spec)
        assert resolve_local_model(spec) is None


def test_local_specs_resolve_to_the_provider(tmp_path):
    pytest.importorskip("llama_cpp")
    p = resolve_local_model("local:qwen2.5-coder-0.5b", n_ctx=2048)
    assert isinstance(p, LlamaCppProvider)
    assert p.model == "local/qwen2.5-coder-0.5b" and p.settings().n_ctx == 2048
    assert resolve_local_model("qwen2.5-coder-1.5b").model == "local/qwen2.5-coder-1.5b"
    gguf = tmp_path / "My-Model.Q4.GGUF"
    q = resolve_local_model(str(gguf))
    assert q.spec is None and q.path == gguf.resolve() and q.model == "local/My-Model.Q4.GGUF"
    with pytest.raises(UnknownModelError, match="flowbot models list"):
        resolve_local_model("local:no-such-model")


def test_missing_llama_cpp_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(LMPermanentError) as err:
        resolve_local_model("qwen2.5-coder-0.5b")
    assert str(err.value) == MISSING_EXTRA
    assert "pip install 'flowbot[local]'" in str(err.value)
    with pytest.raises(LMPermanentError, match=r"flowbot\[local\]"):
        LlamaCppProvider("qwen2.5-coder-0.5b").load()


def test_provider_is_free_and_loads_nothing_when_constructed():
    p = LlamaCppProvider("qwen2.5-coder-0.5b")
    assert p.price_per_token() == (0.0, 0.0)
    assert p.stats is None
    assert p.max_concurrency == 1
    assert p.settings().n_ctx == 8192  # the registry's recommendation


def test_threads_default_to_physical_cores_and_env_overrides(monkeypatch):
    monkeypatch.delenv("FLOWBOT_LOCAL_THREADS", raising=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert 1 <= physical_cores() <= cpus
    assert default_threads() == physical_cores()
    monkeypatch.setenv("FLOWBOT_LOCAL_THREADS", "3")
    assert LlamaCppProvider("qwen2.5-coder-0.5b").settings().n_threads == 3
    monkeypatch.setenv("FLOWBOT_LOCAL_THREADS", "many")
    with pytest.raises(LMPermanentError, match="FLOWBOT_LOCAL_THREADS"):
        default_threads()


def test_local_path_must_exist_and_be_gguf(tmp_path):
    pytest.importorskip("llama_cpp")
    with pytest.raises(LMPermanentError, match="not found"):
        LlamaCppProvider(str(tmp_path / "absent.gguf")).load()
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(LMPermanentError, match="not a GGUF model file"):
        check_gguf(text)
    with pytest.raises(LMPermanentError, match="not a GGUF model file"):
        LlamaCppProvider(str(text)).load()
    assert not any(s.path == str(text.resolve()) for s in loaded_engines())


def test_corrupted_model_is_never_loaded(fake_model, server):
    """A stored file that fails its checksum is deleted, and loading fails if no intact copy comes."""
    pytest.importorskip("llama_cpp")
    bad = bytearray(fake_model.data)
    bad[-1] ^= 0x55
    server.files["/bad"] = bytes(bad)
    spec = fake_model.with_sources(server.source("/bad"))
    target = model_path(spec)
    target.parent.mkdir(parents=True)
    target.write_bytes(bytes(bad))

    strict = LlamaCppProvider(spec, auto_pull=False, progress=False)
    with pytest.raises(LMPermanentError, match="flowbot models pull fake-model"):
        strict.load()
    with pytest.raises(ModelFetchError, match="checksum mismatch"):
        LlamaCppProvider(spec, progress=False).load()
    assert not target.exists()
    assert not any(s.path == str(target) for s in loaded_engines())


def test_an_intact_model_passes_the_gate(fake_model, server):
    server.files["/m"] = fake_model.data
    spec = fake_model.with_sources(server.source("/m"))
    p = LlamaCppProvider(spec, progress=False)
    path = p.ensure_file()  # fetch + verify: the step right before llama.cpp loads the file
    assert path.read_bytes() == fake_model.data
    assert LlamaCppProvider(spec, auto_pull=False).ensure_file() == path == pull(spec, progress=False)
