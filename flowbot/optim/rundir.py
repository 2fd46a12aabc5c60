"""A run directory: config, append-only event log, LM cache, best workflow, summary, stop file.

    run/
      config.json     the run's settings and its run id (written once)
      events.jsonl    one JSON event per line: candidates, edits, scores, costs (append-only)
      cache.sqlite    every LM response (re-running the command pays for nothing already here)
      best.json       the best workflow so far (rewritten atomically on each improvement)
      summary.json    the final result
      sessions.json   when each session started and last logged (time budgets span sessions)
      STOP            create this file to stop the run cleanly
      run.lock        held (``flock``) by the one process using the run; says which one (JSON)

Resuming replays the run from its cache: the loops make the same calls and get the same answers,
so they re-emit the same events; the log writer checks them against the log instead of appending
them again, and appends only what is new. An event is checked whole, all but what
:func:`same_event` lets differ (when it was logged, the usage counted so far, the session's own
limits): at the first event that differs — the resumed run took another path, say a rewrite a
larger budget can now race — the log is cut there and the rest is this session's.

One process at a time: a second ``flowbot optimize`` on the same directory would pay every call
twice and interleave the event log, so it stops at once, saying who holds the run. The lock is
the kernel's, so a killed process (``kill -9``) leaves no stale lock. Every file that is rewritten
(config.json, summary.json, best.json, a trimmed events.jsonl) is written to a temporary file and
renamed over the old one, so a reader or a crash never sees half a file.

For crash tests only, ``FLOWBOT_CRASH_AT`` makes the process SIGKILL itself at a named point:
``events:N`` (halfway through writing the N-th event line) or ``summary`` (summary.json written to
its temporary file, not yet renamed). Unset, it does nothing.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flowbot.errors import FlowBotError
from flowbot.graph.io import save_workflow
from flowbot.graph.sketch import Workflow

STOP_FILE = "STOP"
#: the lock file of a run directory: held (``flock``) by the one process using the run, and
#: naming it as one JSON object, ``{"pid", "host", "command", "since"}``. A run is live exactly
#: while the lock is held (:func:`lock_holder`); the file itself stays behind, harmlessly.
LOCK_FILE = "run.lock"
#: where runs made before the lock had its name kept it ("lock", holding a line such as
#: "flowbot optimize (pid 123 on host, since 2025-01-01 10:00:00)"): still read, and still honoured
LEGACY_LOCK_FILES = ("lock",)
#: how long opening a run waits for a lock that is only being probed (``flowbot runs``)
LOCK_WAIT_S = 0.5
CRASH_ENV = "FLOWBOT_CRASH_AT"


class RunDirError(FlowBotError):
    """A run directory that cannot be used: held by another process, or made with other settings."""


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:  # (no fsync: this guards against a killed
            fh.write(text)                                 # process and readers, not a power cut)
        if path.name == "summary.json":
            crash_point("summary")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def crash_point(name: str, count: int | None = None) -> None:
    """SIGKILL this process when ``$FLOWBOT_CRASH_AT`` names this point (crash tests only)."""
    want = os.environ.get(CRASH_ENV)
    if not want:
        return
    point, _, at = want.partition(":")
    if point == name and (not at or (count is not None and at == str(count))):
        os.kill(os.getpid(), signal.SIGKILL)


def read_event_log(path: Path) -> tuple[list[Any], int | None]:
    """The events of an ``events.jsonl``, and the number of the line where reading stopped (None
    when the log is whole): a crash mid-write can leave a torn last line; everything before it stands.

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = log.write_text('{"seq": 1}\\n{"seq": 2}\\n{"se')
    >>> read_event_log(log)
    ([{'seq': 1}, {'seq': 2}], 3)
    """
    events: list[Any] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                return events, lineno
    return events, None


#: fields that may differ between an event and its replay: when it was logged, and the usage counted
#: so far (a resumed run counts the calls an earlier session paid for as replayed)
VOLATILE_FIELDS = frozenset({"time", "usage_total"})
#: per event type, fields that describe the session rather than the run: a resumed session starts
#: with ``resumed`` true and may raise the budget's limits; where the larger budget changes a
#: decision, the events from there on differ and the log is cut there
SESSION_FIELDS: dict[str, frozenset[str]] = {"run_started": frozenset({"resumed", "budget"}),
                                             "budget_plan": frozenset({"search"})}


def same_event(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new``, re-emitted by a resumed run, is the logged event ``old``: every field equal
    (as JSON) but the volatile ones (:data:`VOLATILE_FIELDS`, :data:`SESSION_FIELDS`).

    >>> logged = {"seq": 3, "type": "inner_step", "val_score": 0.5, "time": 1.0}
    >>> same_event(logged, {"seq": 3, "type": "inner_step", "val_score": 0.5, "time": 9.0})
    True
    >>> same_event(logged, {"seq": 3, "type": "inner_step", "val_score": 1.0})
    False
    """
    skip = VOLATILE_FIELDS | SESSION_FIELDS.get(str(new.get("type")), frozenset())
    as_logged = json.loads(json.dumps(new, ensure_ascii=False, default=str))
    return ({k: v for k, v in old.items() if k not in skip} ==
            {k: v for k, v in as_logged.items() if k not in skip})


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.existing: list[dict[str, Any]] = []
        if path.exists():
            self.existing = read_event_log(path)[0]
            self._truncate_to(len(self.existing))
        self.seq = 0
        self.replayed = 0
        self.diverged_at: int | None = None
        self.listeners: list[Any] = []

    def _truncate_to(self, n: int) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.existing[:n]))

    def __call__(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event = {"seq": self.seq, **event}
        if self.diverged_at is None and self.seq <= len(self.existing):
            old = self.existing[self.seq - 1]
            if same_event(old, event):
                self.replayed += 1
                self._notify(old, replayed=True)
                return
            # the resumed run took another path (e.g. a larger budget): keep the log's prefix
            self.diverged_at = self.seq
            self.existing = self.existing[: self.seq - 1]
            self._truncate_to(len(self.existing))
        event.setdefault("time", round(time.time(), 3))
        line = json.dumps(event, ensure_ascii=False, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            if os.environ.get(CRASH_ENV, "").startswith("events:"):
                fh.write(line[: len(line) // 2])  # a torn line, as a crash mid-write leaves it
                fh.flush()
                crash_point("events", self.seq)
                fh.write(line[len(line) // 2:])
            else:
                fh.write(line)
        self._notify(event, replayed=False)

    def _notify(self, event: dict[str, Any], replayed: bool) -> None:
        for listener in self.listeners:
            listener(event, replayed)


#: settings added after runs were made with the value that reproduces how those runs behaved: a
#: saved run without the setting resumes when the new value is this one
LEGACY_SETTINGS: dict[str, Any] = {
    "optimize.outer.schedule": "tune-first",
    "optimize.outer.inner_steps_per_round": 1,
    "optimize.outer.final_tuning": False,
    "optimize.inner.step": "rewrite",
    "optimize.inner.max_rules": 8,
    "optimize.inner.specificity_guard": False,
    "optimize.inner.demo_sets": 1,
    "optimize.inner.demo_bootstrap": 0,
    "optimize.inner.demo_teacher": "task",
}


def changed_settings(saved: dict[str, Any], new: dict[str, Any], mutable: set[str], prefix: str = "") -> list[str]:
    """Dotted paths of the settings in ``new`` that differ from ``saved``, at any depth. The dotted
    paths in ``mutable`` may change; a setting only ``saved`` has is one this run no longer uses (for
    example the outer loop's settings in an inner-only run) and does not count; a setting only
    ``new`` has counts unless it has its legacy value (:data:`LEGACY_SETTINGS`)."""
    changed = []
    for key, value in new.items():
        path = f"{prefix}{key}"
        if path in mutable:
            continue
        old = saved.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict):
            changed += changed_settings(old, value, mutable, f"{path}.")
        elif old is _MISSING and path in LEGACY_SETTINGS and LEGACY_SETTINGS[path] == value:
            continue
        elif old != value:
            changed.append(path)
    return sorted(changed)


_MISSING = object()


class RunDir:
    #: settings (dotted paths) that may change between sessions of one run: the budget's limits can be
    #: raised to extend it, and how wide it runs or shows progress does not change what it computes; how
    #: the budget is divided (``optimize.budget.*``) does, and is compared
    MUTABLE = {"budget", "optimize.concurrency", "optimize.inner.concurrency", "optimize.progress", "report"}

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the run directory and lock it for this process; :class:`RunDirError`
        when another process holds it. The lock lasts until :meth:`close` (or the process ends)."""
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = _acquire(self.path)
        for stale in self.path.glob(".*.tmp"):  # left by a crash between write and rename
            stale.unlink(missing_ok=True)
        self.events = EventLog(self.path / "events.jsonl")
        self._earlier_sessions: list[dict[str, float]] = list(self.read_json("sessions.json") or [])
        self._this_session = {"start": time.time(), "last": time.time()}
        # a weak reference, so no cycle keeps an unused RunDir (and its lock) alive
        touch = weakref.WeakMethod(self._touch_session)
        self.events.listeners.append(lambda event, replayed: (m := touch()) and m(event, replayed))

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cache_path(self) -> Path:
        return self.path / "cache.sqlite"

    @property
    def stop_file(self) -> Path:
        return self.path / STOP_FILE

    def stop_requested(self) -> str | None:
        return f"stop file {self.stop_file} found" if self.stop_file.exists() else None

    def start(self, config: dict[str, Any]) -> tuple[str, bool]:
        """Write or check config.json; returns (run id, resumed?)."""
        path = self.path / "config.json"
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            changed = changed_settings(saved["config"], config, self.MUTABLE)
            if changed:
                raise RunDirError(
                    f"{self.path} holds a run with other settings ({', '.join(changed)}); "
                    "use another --run-dir, or delete this one to start over")
            saved["config"] = config
            saved["sessions"] = saved.get("sessions", 1) + 1
            atomic_write_text(path, json.dumps(saved, indent=2))
            return saved["run_id"], True
        if self.stop_file.exists():
            self.stop_file.unlink()
        run_id = uuid.uuid4().hex[:12]
        atomic_write_text(path, json.dumps({"run_id": run_id, "sessions": 1, "config": config}, indent=2))
        return run_id, False

    def elapsed_before(self) -> float:
        """Wall time the run's earlier sessions spent (``sessions.json``: each session's start and
        its last event, so a session that was killed counts up to its last event)."""
        return sum(max(0.0, x["last"] - x["start"]) for x in self._earlier_sessions)

    def _touch_session(self, event: dict[str, Any], replayed: bool) -> None:
        now = time.time()
        self._this_session["last"] = now
        self.write_json("sessions.json", self._earlier_sessions + [self._this_session])

    def clear_stop(self) -> None:
        if self.stop_file.exists():
            self.stop_file.unlink()

    def save_best(self, workflow: Workflow) -> Path:
        return save_workflow(workflow, self.path / "best.json")

    def save_workflow(self, name: str, workflow: Workflow) -> Path:
        return save_workflow(workflow, self.path / "workflows" / f"{name}.json")

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_text(self.path / name, json.dumps(data, indent=2, ensure_ascii=False, default=str))

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@dataclass
class LockHolder:
    """Who holds (or last held) a run directory's lock, as its lock file says."""

    pid: int | None = None
    host: str | None = None
    command: str | None = None
    since: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return self.command or "another process"
        where = f"pid {self.pid}" + (f" on {self.host}" if self.host else "")
        return f"{self.command or 'flowbot'} ({where}" + (f", since {self.since})" if self.since else ")")


def lock_record() -> dict[str, Any]:
    """What this process writes into the lock file it holds."""
    cli = bool(sys.argv) and (sys.argv[0].endswith("flowbot") or sys.argv[0].endswith(os.path.join("flowbot", "cli",
                                                                                                    "main.py")))
    command = " ".join(["flowbot", *sys.argv[1:2]]) if cli else "flowbot"
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}


def parse_lock(text: str) -> LockHolder | None:
    """A lock file's text: the JSON record, or an older form (the legacy "flowbot optimize (pid N on
    HOST, since ...)" line, or a bare pid); None when it names no one."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        pid = data.get("pid")
        return LockHolder(pid=int(pid) if isinstance(pid, int) or (isinstance(pid, str) and pid.isdigit()) else None,
                          host=_str_or_none(data.get("host") or data.get("hostname")),
                          command=_str_or_none(data.get("command")), since=_str_or_none(data.get("since")))
    if isinstance(data, int):
        return LockHolder(pid=data)
    m = re.fullmatch(r"(.*?)\s*\(pid (\d+)(?: on (\S+?))?(?:, since ([^)]*))?\)", text)
    if m:
        return LockHolder(pid=int(m.group(2)), host=m.group(3), command=m.group(1) or None, since=m.group(4))
    return None


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def read_lock(run_dir: str | Path) -> LockHolder | None:
    """What the run directory's lock file (or a legacy one) says, held or not."""
    for name in (LOCK_FILE, *LEGACY_LOCK_FILES):
        try:
            holder = parse_lock((Path(run_dir) / name).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if holder is not None:
            return holder
    return None


def lock_holder(run_dir: str | Path) -> LockHolder | None:
    """The process using the run directory now, or None when no process holds its lock.

    The lock is the kernel's (``flock``), so a killed process leaves none behind, whatever its lock
    file still says, and a reused pid cannot fool this. It is probed with a shared lock taken and
    released at once, never blocking the run (which waits up to :data:`LOCK_WAIT_S` for a probe).
    Only when a lock file cannot be opened is its recorded pid checked instead."""
    for name in (LOCK_FILE, *LEGACY_LOCK_FILES):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            holder = _holder_of(path)
        except OSError:  # unreadable here: trust what it records
            try:
                holder = parse_lock(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                holder = None
            if holder is None or holder.pid is None or not (
                    (holder.host is not None and holder.host != socket.gethostname()) or _pid_alive(holder.pid)):
                holder = None
        if holder is not None:
            return holder
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    except OSError:
        return False
    return True


def _acquire(run_dir: Path) -> IO[str]:
    """An open lock file holding an exclusive ``flock``, with this process described in it. A run
    made before the lock file had its name is also refused while an older FlowBot holds its lock."""
    for name in LEGACY_LOCK_FILES:
        try:
            old = _holder_of(run_dir / name) if (run_dir / name).is_file() else None
        except OSError:
            old = None
        if old is not None:
            raise _busy(run_dir, old)
    path = run_dir / LOCK_FILE
    fh = open(path, "a+", encoding="utf-8")
    end = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < end:  # perhaps only a probe (flowbot runs): it lets go at once
                time.sleep(0.01)
                continue
            fh.seek(0)
            holder = parse_lock(fh.read()) or LockHolder()
            fh.close()
            raise _busy(run_dir, holder) from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(lock_record()) + "\n")
    fh.flush()
    return fh


def _holder_of(path: Path) -> LockHolder | None:
    """The holder of one lock file, or None when it is free."""
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return parse_lock(fh.read().decode("utf-8", "replace")) or LockHolder()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None


def _busy(run_dir: Path, holder: LockHolder) -> RunDirError:
    return RunDirError(f"{run_dir} is in use by {holder.describe()}; wait for it to finish, or stop it by creating "
                       f"{run_dir / STOP_FILE}")
