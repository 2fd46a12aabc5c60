"""A run directory: config, append-only event log, LM cache, best workflow, summary, stop file.

    run/
      config.json     the run's settings and its run id (written once)
      events.jsonl    one JSON event per line: candidates, edits, scores, costs (append-only)
      cache.sqlite    every LM response (re-running the command pays for nothing already here)
      best.json       the best workflow so far (rewritten atomically on each improvement)
      summary.json    the final result
      sessions.json   when each session started and last logged (time budgets span sessions)
      STOP            create this file to stop the run cleanly

Resuming replays the run from its cache: the loops make the same calls and get the same answers,
so they re-emit the same events; the log writer checks them against the log instead of appending
them again, and appends only what is new.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from flowbot.graph.io import save_workflow
from flowbot.graph.sketch import Workflow

STOP_FILE = "STOP"


class RunDirError(ValueError):
    pass


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.existing: list[dict[str, Any]] = []
        if path.exists():
            for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
                if line.strip():
                    try:
                        self.existing.append(json.loads(line))
                    except json.JSONDecodeError:
                        # a crash mid-write can leave a torn last line; everything before it stands
                        break
            self._truncate_to(len(self.existing))
        self.seq = 0
        self.replayed = 0
        self.diverged_at: int | None = None
        self.listeners: list[Any] = []

    def _truncate_to(self, n: int) -> None:
        with open(self.path, "w", encoding="utf-8") as fh:
            for e in self.existing[:n]:
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")

    def __call__(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event = {"seq": self.seq, **event}
        if self.diverged_at is None and self.seq <= len(self.existing):
            old = self.existing[self.seq - 1]
            if old.get("type") == event.get("type"):
                self.replayed += 1
                self._notify(old, replayed=True)
                return
            # the resumed run took another path (e.g. a larger budget): keep the log's prefix
            self.diverged_at = self.seq
            self.existing = self.existing[: self.seq - 1]
            self._truncate_to(len(self.existing))
        event.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        self._notify(event, replayed=False)

    def _notify(self, event: dict[str, Any], replayed: bool) -> None:
        for listener in self.listeners:
            listener(event, replayed)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").split("\n") if line.strip()]


def changed_settings(saved: dict[str, Any], new: dict[str, Any], mutable: set[str], prefix: str = "") -> list[str]:
    """Dotted paths of the settings in ``new`` that differ from ``saved``, at any depth. Names in
    ``mutable`` may change; a setting only ``saved`` has is one this run no longer uses (for
    example the outer loop's settings in an inner-only run) and does not count."""
    changed = []
    for key, value in new.items():
        if key in mutable:
            continue
        old = saved.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict):
            changed += changed_settings(old, value, mutable, f"{prefix}{key}.")
        elif old != value:
            changed.append(f"{prefix}{key}")
    return sorted(changed)


_MISSING = object()


class RunDir:
    #: settings that may change between sessions of one run (budgets can be raised to extend it)
    MUTABLE = {"budget", "concurrency", "progress", "report"}

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.events = EventLog(self.path / "events.jsonl")
        self._earlier_sessions: list[dict[str, float]] = list(self.read_json("sessions.json") or [])
        self._this_session = {"start": time.time(), "last": time.time()}
        self.events.listeners.append(self._touch_session)

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
            path.write_text(json.dumps(saved, indent=2), encoding="utf-8")
            return saved["run_id"], True
        if self.stop_file.exists():
            self.stop_file.unlink()
        run_id = uuid.uuid4().hex[:12]
        path.write_text(json.dumps({"run_id": run_id, "sessions": 1, "config": config}, indent=2), encoding="utf-8")
        return run_id, False

    def add_session_time(self, seconds: float) -> float:
        """Add this session's wall time to config.json; returns the run's total over all sessions."""
        path = self.path / "config.json"
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved["wall_s_total"] = saved.get("wall_s_total", 0.0) + seconds
        path.write_text(json.dumps(saved, indent=2), encoding="utf-8")
        return saved["wall_s_total"]

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
        path = self.path / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        tmp.replace(path)
        return path

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
