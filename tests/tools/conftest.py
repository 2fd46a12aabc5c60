"""Shared fixtures for the tools tests: isolation levels, shared benchmark rows, process scans."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from flowbot.tools.sandbox import sandbox_info


def shared_datasets() -> Path:
    """``$FLOWBOT_SHARED_DATASETS``, else ``shared/datasets`` beside the repository checkout."""
    env = os.environ.get("FLOWBOT_SHARED_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def read_jsonl(relative: str) -> list[dict[str, Any]]:
    path = shared_datasets() / relative
    if not path.exists():
        pytest.skip(f"shared benchmark data not found: {path}")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def namespaces_available() -> bool:
    return asyncio.run(sandbox_info())["isolation"] == "namespaces"


def processes_with(*tokens: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains every one of ``tokens``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if all(t in cmd for t in tokens) and state != "Z" and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def processes_in(directory: str, leaf: str = "") -> list[int]:
    """Pids of live (non-zombie) processes working inside ``directory`` (in a dir named ``leaf``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        inside = cwd == directory or cwd.startswith(directory.rstrip("/") + "/")
        if inside and state != "Z" and (not leaf or os.path.basename(cwd) == leaf):
            found.append(int(entry))
    return found


@pytest.fixture(scope="session")
def has_namespaces() -> bool:
    return namespaces_available()


def bwrap_available() -> bool:
    from flowbot.tools.sandbox import _host

    return bool(asyncio.run(_host()).bwrap)


@pytest.fixture(scope="session")
def has_bwrap() -> bool:
    return bwrap_available()


@pytest.fixture(params=["namespaces", "bwrap", "process"])
def isolation(request: pytest.FixtureRequest, has_namespaces: bool, has_bwrap: bool) -> str:
    if request.param == "namespaces" and not has_namespaces:
        pytest.skip("namespace isolation unavailable on this host (needs Linux + root)")
    if request.param == "bwrap" and not has_bwrap:
        pytest.skip("bubblewrap unavailable on this host (apt install bubblewrap; needs user namespaces)")
    return request.param


@pytest.fixture(params=["namespaces", "bwrap"])
def boundary(request: pytest.FixtureRequest, has_namespaces: bool, has_bwrap: bool) -> str:
    """A level with a kernel boundary."""
    if request.param == "namespaces" and not has_namespaces:
        pytest.skip("namespace isolation unavailable on this host (needs Linux + root)")
    if request.param == "bwrap" and not has_bwrap:
        pytest.skip("bubblewrap unavailable on this host (apt install bubblewrap; needs user namespaces)")
    return request.param


@pytest.fixture
def ns_only(has_namespaces: bool) -> None:
    if not has_namespaces:
        pytest.skip("namespace isolation unavailable on this host (needs Linux + root)")
