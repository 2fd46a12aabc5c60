"""Issue 13, hole 4: one process per run directory, and rewritten files are never seen half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from pathlib import Path

import pytest

import flowbot
from flowbot.optim.rundir import LOCK_FILE, RunDir, RunDirError, lock_holder, parse_lock


def test_a_second_opener_is_refused_with_the_holder_named(tmp_path):
    first = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match=rf"in use by .*pid {os.getpid()}"):
        RunDir(tmp_path / "run")
    first.close()
    RunDir(tmp_path / "run").close()  # free again once released


def hold(path, legacy: str | None = None) -> subprocess.Popen:
    """Another process holding the lock of run directory ``path`` until its stdin closes: this
    version's RunDir, or (``legacy`` text) an older FlowBot's flock on the file named ``lock``."""
    if legacy is None:
        code = f"from flowbot.optim.rundir import RunDir\nrd = RunDir({str(path)!r})"
    else:
        code = (f"import fcntl, os\nos.makedirs({str(path)!r}, exist_ok=True)\n"
                f"fh = open(os.path.join({str(path)!r}, 'lock'), 'a+')\nfcntl.flock(fh, fcntl.LOCK_EX)\n"
                f"fh.write({legacy!r}.replace('PID', str(os.getpid())))\nfh.flush()")
    proc = subprocess.Popen([sys.executable, "-c", code + "\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(flowbot.__file__).parents[1])})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_flowbot_runs_and_the_run_directory_agree_on_the_lock(tmp_path):
    """One lock file (run.lock, JSON), written by RunDir and read by `flowbot runs`: a run held by
    another process shows as running with its holder; a second opener is refused naming it."""
    run = tmp_path / "run"
    proc = hold(run)
    try:
        record = json.loads((run / LOCK_FILE).read_text())
        assert LOCK_FILE == "run.lock" and record["pid"] == proc.pid and record["host"]
        holder = lock_holder(run)
        assert holder is not None and holder.pid == proc.pid
        with pytest.raises(RunDirError, match=rf"in use by flowbot \(pid {proc.pid} on "):
            RunDir(run)
        assert lock_holder(run) is not None  # probing twice never takes the lock away
    finally:
        release(proc)
    assert lock_holder(run) is None  # the kernel let go with the process; the file stays behind
    assert (run / LOCK_FILE).exists()
    RunDir(run).close()


def test_a_stale_lock_file_naming_a_live_pid_is_not_a_live_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "here"}))
    (run / "lock").write_text(f"flowbot optimize (pid {os.getppid()} on here, since 2025-01-01 10:00:00)\n")
    assert lock_holder(run) is None
    RunDir(run).close()


def test_runs_made_by_an_older_flowbot_stay_readable(tmp_path):
    """The old lock file (``lock``, one line of text) is parsed, and honoured while its owner lives."""
    old = parse_lock("flowbot optimize (pid 4321 on box, since 2025-01-01 10:00:00)")
    assert (old.pid, old.host, old.command, old.since) == (4321, "box", "flowbot optimize", "2025-01-01 10:00:00")
    assert parse_lock("4321").pid == 4321 and parse_lock('{"pid": 7}').pid == 7 and parse_lock("") is None
    run = tmp_path / "run"
    proc = hold(run, legacy="flowbot optimize (pid PID on box, since 2025-01-01 10:00:00)")
    try:
        holder = lock_holder(run)
        assert holder is not None and holder.pid == proc.pid and holder.command == "flowbot optimize"
        with pytest.raises(RunDirError, match=rf"in use by flowbot optimize \(pid {proc.pid} on box"):
            RunDir(run)
    finally:
        release(proc)
    assert lock_holder(run) is None
    RunDir(run).close()


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
        for i in range(100):
            saved = json.loads(path.read_text(encoding="utf-8"))
            rd.write_json("config.json", {**saved, "rewrites": i})
    finally:
        done.set()
        reader.join()
    rd.close()
    assert not bad
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))


# Two real `flowbot optimize` processes on one run directory: the battery's concurrency section
# (tests/reliability/test_battery.py runs its fast subset).
