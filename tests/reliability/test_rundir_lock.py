"""Issue 13, hole 4: one process per run directory, and rewritten files are never seen half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from flowbot.optim.rundir import RunDir, RunDirError


def test_a_second_opener_is_refused_with_the_holder_named(tmp_path):
    first = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match=rf"in use by .*pid {os.getpid()}"):
        RunDir(tmp_path / "run")
    first.close()
    RunDir(tmp_path / "run").close()  # free again once released


def test_the_lock_dies_with_its_process(tmp_path):
    code = f"from flowbot.optim.rundir import RunDir; RunDir({str(tmp_path / 'run')!r}); import os; os.kill(os.getpid(), 9)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    RunDir(tmp_path / "run").close()  # no stale lock after kill -9


def test_config_rewrites_are_atomic_for_readers(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.start({"task": "x", "padding": "y" * 200_000})
    path = tmp_path / "run" / "config.json"
    bad: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, FileNotFoundError) as exc:
                bad.append(type(exc).__name__)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(100):
            rd.add_session_time(0.5)
    finally:
        done.set()
        reader.join()
    rd.close()
    assert not bad
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))


# Two real `flowbot optimize` processes on one run directory: the battery's concurrency section
# (tests/reliability/test_battery.py runs its fast subset).
