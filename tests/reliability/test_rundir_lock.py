"""Issue 13, hole 4: one process per run directory, and rewritten files are never seen half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from flowbot.lm.testing import OpenAITestServer
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


def test_two_optimize_processes_on_one_run_directory(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(20)))
    with OpenAITestServer(reply="Answer: 3", latency_s=0.3) as srv:  # slow, so the first is still running
        cmd = [sys.executable, "-m", "flowbot.cli.main", "optimize", "--data", str(data), "--input", "q",
               "--target", "a", "--metric", "numeric", "--model", "m", "--base-url", srv.base_url,
               "--run-dir", str(tmp_path / "run"), "--no-report", "--steps", "1", "--rounds", "1",
               "--train-size", "5", "--val-size", "4", "--test-size", "4", "--concurrency", "1"]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while srv.request_count == 0 and time.monotonic() < deadline:  # the first one is paying
            time.sleep(0.02)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        srv.latency_s = 0.0
        first.communicate(timeout=120)
        paid_by_both = srv.request_count
        srv.reset()
        alone = subprocess.run([*cmd[:cmd.index("--run-dir") + 1], str(tmp_path / "alone"),
                                *cmd[cmd.index("--run-dir") + 2:]], capture_output=True, text=True, timeout=120)
        assert alone.returncode == 0, alone.stderr
        paid_alone = srv.request_count
    assert first.returncode == 0
    assert second.returncode != 0 and f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert paid_by_both == paid_alone  # nothing paid twice
    seqs = [json.loads(line)["seq"] for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))
