"""``flowbot runs [DIR]``: the run directories under DIR with what each did and how to resume it.

    >>> [(r.path.name, r.status) for r in list_runs("runs")]        # doctest: +SKIP
    [('gsm8k-flowbot-1a2b3c4d', 'finished'), ('drop-aflow-99aa0b1c', 'interrupted')]

Only the run directory's files are read (config.json, events.jsonl, summary.json, run.lock), and
each defensively: a torn log, an unknown event type or a missing key never hides a run.

Status: ``running`` when ``run.lock`` names a live process (or, for runs without a lock, a file
of the run changed in the last two minutes and it has not finished); ``finished`` or ``stopped``
(by a budget or a STOP file) when the log ends with ``run_finished``; otherwise ``interrupted``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowbot.errors import FlowBotError
from flowbot.optim.rundir import read_event_log

LOCK_FILE = "run.lock"
RECENT_S = 120.0  # a run without a lock whose files changed this recently is taken as running
MAX_DEPTH = 3  # how deep under DIR run directories are looked for (results/<task>/<method>/...)


@dataclass
class RunInfo:
    path: Path
    task: str = "?"
    method: str = "?"
    task_model: str = "?"
    optimizer_model: str = "?"
    seed_val: float | None = None
    best_val: float | None = None
    best_id: str | None = None
    seed_test: float | None = None
    test: float | None = None
    calls: int = 0
    tokens: int = 0
    usd: float | None = None
    status: str = "interrupted"
    stopped: str | None = None
    sessions: int = 1
    last_activity: float | None = None
    command: str | None = None  # how to resume it (recorded, or rebuilt from the settings)
    command_rebuilt: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / "events.jsonl").exists() or (path / "summary.json").exists())


def find_runs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Run directories at or under ``root`` (not inside another run), sorted by path."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if is_run_dir(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(root, 1)
    return found


class NoSuchRunsDirectory(FlowBotError, FileNotFoundError):
    """The folder to list runs from does not exist."""


def list_runs(root: str | Path = "runs") -> list[RunInfo]:
    """Every run under ``root`` (raises FileNotFoundError when ``root`` does not exist)."""
    root = Path(root)
    if not root.exists():
        raise NoSuchRunsDirectory(f"{root}: no such directory (runs are kept in runs/ by default)")
    return [run_info(p) for p in find_runs(root)]


# -- one run ----------------------------------------------------------------------------------
def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError) as exc:
        warnings.append(f"{path.name}: unreadable ({exc})")
        return None


def _read_events(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    try:
        events = read_event_log(path)[0] if path.exists() else []  # (up to a torn last line)
    except OSError as exc:
        warnings.append(f"events.jsonl: unreadable ({exc})")
        return []
    return [e for e in events if isinstance(e, dict)]


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def run_info(path: str | Path) -> RunInfo:
    path = Path(path)
    info = RunInfo(path=path)
    config = _read_json(path / "config.json", info.warnings) or {}
    settings = config.get("config") if isinstance(config.get("config"), dict) else {}
    summary = _read_json(path / "summary.json", info.warnings)
    summary = summary if isinstance(summary, dict) else {}
    events = _read_events(path / "events.jsonl", info.warnings)
    started = next((e for e in events if e.get("type") == "run_started"), {})
    info.sessions = int(_num(config.get("sessions")) or 1)
    info.task = str(summary.get("task") or started.get("task") or settings.get("task") or "?")
    info.method = str(summary.get("method") or started.get("method") or settings.get("method") or "?")
    info.task_model = _model(summary.get("task_model") or started.get("task_model"), settings.get("model"))
    info.optimizer_model = _model(summary.get("optimizer_model") or started.get("optimizer_model"),
                                  settings.get("optimizer_model"), info.task_model)
    _scores(info, summary, events)
    _spend(info, summary, events)
    _status(info, path, events)
    info.command, info.command_rebuilt = resume_command(path, config, settings)
    return info


def _model(recorded: Any, setting: Any, same_as: str | None = None) -> str:
    """The model as the run resolved it; the settings' placeholders only when nothing better is known."""
    if isinstance(recorded, str) and recorded:
        return recorded
    if setting == "(same as model)" and same_as:
        return same_as
    return str(setting) if setting else "?"


def _scores(info: RunInfo, summary: dict[str, Any], events: list[dict[str, Any]]) -> None:
    info.seed_val = _num(_dig(summary, "seed", "val_score"))
    info.best_val = _num(_dig(summary, "best", "val_score"))
    info.best_id = _dig(summary, "best", "id")
    info.test = _num(_dig(summary, "test", "score"))
    info.seed_test = _num(_dig(summary, "seed_test", "score"))
    for e in events:  # what the log knows when there is no summary (yet)
        kind = e.get("type")
        if kind == "seed_evaluated" and info.seed_val is None:
            info.seed_val = _num(e.get("val_score"))
        elif kind == "candidate_evaluated" and not summary:
            score = _num(e.get("val_score"))
            if score is not None and (info.best_val is None or score > info.best_val):
                info.best_val, info.best_id = score, e.get("id")
        elif kind == "test_evaluated" and not summary:
            if e.get("id") == "seed":
                info.seed_test = _num(e.get("score"))
            else:
                info.test = _num(e.get("score"))


def _spend(info: RunInfo, summary: dict[str, Any], events: list[dict[str, Any]]) -> None:
    usage = summary.get("usage_by_role")
    if not isinstance(usage, dict):
        usage = next((e["usage_total"] for e in reversed(events) if isinstance(e.get("usage_total"), dict)), {})
    roles = [u for u in usage.values() if isinstance(u, dict)]
    info.calls = int(sum(_num(u.get("calls")) or 0 for u in roles))
    info.tokens = int(sum((_num(u.get("prompt_tokens")) or 0) + (_num(u.get("completion_tokens")) or 0) for u in roles))
    costs = [u.get("cost_usd") for u in roles]
    info.usd = float(sum(_num(c) or 0 for c in costs)) if roles and all(c is not None for c in costs) else None


def lock_pid(path: Path) -> tuple[int | None, str | None]:
    """(pid, host) recorded in a run's lock file: JSON with "pid" (and "host"), or a bare number."""
    try:
        text = (path / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None, None
    try:
        data = json.loads(text)
    except ValueError:
        data = text.split()[0] if text else None
    if isinstance(data, dict):
        pid, host = data.get("pid"), data.get("host") or data.get("hostname")
    else:
        pid, host = data, None
    try:
        return int(pid), (str(host) if host else None)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    except OSError:
        return False
    return True


def _status(info: RunInfo, path: Path, events: list[dict[str, Any]]) -> None:
    times = [f.stat().st_mtime for f in path.iterdir() if f.is_file()] if path.is_dir() else []
    info.last_activity = max(times) if times else None
    finished = next((e for e in reversed(events) if e.get("type") == "run_finished"), None)
    last_start = max((i for i, e in enumerate(events) if e.get("type") == "run_started"), default=-1)
    done = finished is not None and events.index(finished) > last_start
    pid, host = lock_pid(path)
    if pid is not None:
        elsewhere = host is not None and host != socket.gethostname()
        if elsewhere or pid_alive(pid):
            info.status = "running"
            return
    elif not done and info.last_activity is not None and time.time() - info.last_activity < RECENT_S:
        info.status = "running"
        return
    if done:
        assert finished is not None
        info.stopped = finished.get("stopped") or None
        info.status = "stopped" if info.stopped else "finished"
    else:
        info.status = "interrupted"


# -- how to resume it -------------------------------------------------------------------------
def resume_command(path: Path, config: dict[str, Any], settings: dict[str, Any]) -> tuple[str | None, bool]:
    """(command, rebuilt?): the recorded command line with ``--run-dir`` pointing here, or one
    rebuilt from the settings for a built-in benchmark; None for runs started from Python."""
    recorded = config.get("command")
    if isinstance(recorded, str) and recorded.strip():
        try:
            args = shlex.split(recorded)
        except ValueError:
            args = recorded.split()
        args = _without_option(args, "--run-dir") + ["--run-dir", str(path)]
        line = shlex.join(args)
        cwd = config.get("cwd")
        if isinstance(cwd, str) and cwd and Path(cwd).resolve() != Path.cwd().resolve():
            line = f"cd {shlex.quote(cwd)} && {line}"
        return line, False
    rebuilt = rebuild_command(settings, path)
    return rebuilt, rebuilt is not None


def _without_option(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def rebuild_command(settings: dict[str, Any], path: Path) -> str | None:
    """A ``flowbot optimize`` line with the run's settings (built-in benchmarks with a built-in
    seed only: a task or seed from files cannot be named from the settings alone)."""
    from flowbot.tasks.benchmarks import BENCHMARKS

    task = settings.get("task")
    opt = settings.get("optimize") if isinstance(settings.get("optimize"), dict) else None
    if task not in BENCHMARKS or opt is None:
        return None
    seed_name = str(_dig(settings, "seed_workflow", "name") or "")
    kind = seed_name[len(str(task)) + 1:] if seed_name.startswith(f"{task}-") else ""
    if not re.fullmatch(r"io|cot|react|sc\d*", kind):
        return None  # a seed from a file: its path is not in the settings
    args = ["flowbot", "optimize", "--task", str(task)] + (["--from", kind] if kind != "cot" else [])
    for option, key in (("--model", "model"), ("--optimizer-model", "optimizer_model"), ("--base-url", "base_url"),
                        ("--optimizer-base-url", "optimizer_base_url")):
        value = settings.get(key)
        if value and value not in ("(default)", "(same as model)"):
            if key == "optimizer_model" and value == settings.get("model"):
                continue
            args += [option, str(value)]
    method = settings.get("method")
    if method in ("inner-only", "aflow"):
        args += ["--method", str(method)]
    for option, value in (("--train-size", opt.get("train_size")), ("--val-size", opt.get("val_size")),
                          ("--test-size", opt.get("test_size")), ("--seed", opt.get("seed")),
                          ("--concurrency", opt.get("concurrency"))):
        if value is not None:
            args += [option, str(value)]
    inner = opt.get("inner") if isinstance(opt.get("inner"), dict) else {}
    for option, key in (("--steps", "steps"), ("--minibatch", "minibatch_size"), ("--candidates", "candidates"),
                        ("--demos", "demos"), ("--feedback", "feedback")):
        if method != "aflow" and inner.get(key) is not None:
            args += [option, str(inner[key])]
    rounds = _dig(opt, "aflow" if method == "aflow" else "outer", "rounds")
    if method != "inner-only" and rounds is not None:
        args += ["--rounds", str(rounds)]
    objective = opt.get("objective") if isinstance(opt.get("objective"), dict) else {}
    if objective.get("kind") == "cost":
        args += ["--objective", "cost", "--cost-weight", str(objective.get("cost_weight"))]
    if opt.get("evaluate_test") is False:
        args.append("--no-test")
    args += _budget_options(str(settings.get("budget") or ""))
    args += ["--run-dir", str(path)]
    return shlex.join(args)


def _budget_options(text: str) -> list[str]:
    """The budget options behind ``BudgetLimits.describe()`` ("120 calls / $5 / 60 s")."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(" / ")):
        value = part.split(" ")[0].replace(",", "")
        if part.endswith(" calls"):
            out += ["--budget-calls", value]
        elif part.endswith(" tokens"):
            out += ["--budget-tokens", value]
        elif part.startswith("$"):
            out += ["--budget-usd", value[1:]]
        elif part.endswith(" s"):
            out += ["--budget-seconds", value]
    return out
