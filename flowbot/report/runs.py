"""``flowbot runs [DIR]``: the run directories under DIR with what each did and how to resume it.

    >>> [(r.path.name, r.status) for r in list_runs("runs")]        # doctest: +SKIP
    [('gsm8k-flowbot-1a2b3c4d', 'finished'), ('drop-aflow-99aa0b1c', 'interrupted')]

Only the run directory's files are read (config.json, events.jsonl, summary.json, run.lock), and
each defensively: a torn log, an unknown event type or a missing key never hides a run.

A run this version would refuse to resume (its saved settings differ from those its resume
command makes now, compared as a resume compares them) gets ``not_resumable`` instead of a usable
command (:func:`resume_refusal`; a command line is read by the CLI, which ``flowbot runs`` passes
in as ``command_settings``).

Status: ``running`` while a process holds the run's lock (the kernel lock ``flowbot optimize``
takes on ``run.lock``, see :func:`flowbot.optim.rundir.lock_holder`; runs made before it had that
name hold ``lock``), or, for runs without a lock file, while a file of the run changed in the last
two minutes and it has not finished; ``finished`` or ``stopped`` (by a budget or a STOP file) when
the log ends with ``run_finished``; otherwise ``interrupted``.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flowbot.errors import FlowBotError
from flowbot.optim.events import (CandidateEvaluated, LoggedEvent, RunFinished, RunStarted, SeedEvaluated,
                                  TestEvaluated, first_event, read_event)
from flowbot.optim.rundir import LEGACY_LOCK_FILES, LOCK_FILE, lock_holder, read_event_log

#: the optimizer settings a resume command line makes with this version, or None for a command other
#: than ``flowbot optimize``; raises ValueError for one that no longer parses (the CLI's reading:
#: :func:`flowbot.cli.main.command_settings`, which this module cannot import: it is below the CLI)
CommandSettings = Callable[[str], "dict[str, Any] | None"]
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
    not_resumable: str | None = None  # why this version would refuse to resume it (None: it would not)
    holder: str | None = None  # who holds the run's lock, while it runs ("flowbot optimize (pid 12 on host, ...)")
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


def list_runs(root: str | Path = "runs", command_settings: CommandSettings | None = None) -> list[RunInfo]:
    """Every run under ``root`` (raises FileNotFoundError when ``root`` does not exist);
    ``command_settings``: see :func:`resume_refusal`."""
    root = Path(root)
    if not root.exists():
        raise NoSuchRunsDirectory(f"{root}: no such directory (runs are kept in runs/ by default)")
    return [run_info(p, command_settings) for p in find_runs(root)]


# -- one run ----------------------------------------------------------------------------------
def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError) as exc:
        warnings.append(f"{path.name}: unreadable ({exc})")
        return None


def _read_events(path: Path, warnings: list[str]) -> list[LoggedEvent]:
    try:
        events = read_event_log(path)[0] if path.exists() else []  # (up to a torn last line)
    except OSError as exc:
        warnings.append(f"events.jsonl: unreadable ({exc})")
        return []
    return [read_event(e) for e in events if isinstance(e, dict)]


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


def run_info(path: str | Path, command_settings: CommandSettings | None = None) -> RunInfo:
    """What the run directory ``path`` holds; ``command_settings``: see :func:`resume_refusal`."""
    path = Path(path)
    info = RunInfo(path=path)
    config = _read_json(path / "config.json", info.warnings) or {}
    settings = config.get("config") if isinstance(config.get("config"), dict) else {}
    summary = _read_json(path / "summary.json", info.warnings)
    summary = summary if isinstance(summary, dict) else {}
    events = _read_events(path / "events.jsonl", info.warnings)
    started = first_event(events, RunStarted)
    info.sessions = int(_num(config.get("sessions")) or 1)
    info.task = str(summary.get("task") or (started and started.task) or settings.get("task") or "?")
    info.method = str(summary.get("method") or (started and started.method) or settings.get("method") or "?")
    info.task_model = _model(summary.get("task_model") or (started and started.task_model), settings.get("model"))
    info.optimizer_model = _model(summary.get("optimizer_model") or (started and started.optimizer_model),
                                  settings.get("optimizer_model"), info.task_model)
    _scores(info, summary, events)
    _spend(info, summary, events)
    _status(info, path, events)
    info.command, info.command_rebuilt = resume_command(path, config, settings)
    if info.status != "running":
        info.not_resumable = resume_refusal(settings, info.command, command_settings)
    return info


def _model(recorded: Any, setting: Any, same_as: str | None = None) -> str:
    """The model as the run resolved it; the settings' placeholders only when nothing better is known."""
    if isinstance(recorded, str) and recorded:
        return recorded
    if setting == "(same as model)" and same_as:
        return same_as
    return str(setting) if setting else "?"


def _scores(info: RunInfo, summary: dict[str, Any], events: list[LoggedEvent]) -> None:
    info.seed_val = _num(_dig(summary, "seed", "val_score"))
    info.best_val = _num(_dig(summary, "best", "val_score"))
    info.best_id = _dig(summary, "best", "id")
    info.test = _num(_dig(summary, "test", "score"))
    info.seed_test = _num(_dig(summary, "seed_test", "score"))
    for r in events:  # what the log knows when there is no summary (yet)
        e = r.event
        if isinstance(e, SeedEvaluated) and info.seed_val is None:
            info.seed_val = _num(e.val_score)
        elif isinstance(e, CandidateEvaluated) and not summary:
            score = _num(e.val_score)
            if score is not None and (info.best_val is None or score > info.best_val):
                info.best_val, info.best_id = score, e.id
        elif isinstance(e, TestEvaluated) and not summary:
            if e.id == "seed":
                info.seed_test = _num(e.score)
            else:
                info.test = _num(e.score)


def _spend(info: RunInfo, summary: dict[str, Any], events: list[LoggedEvent]) -> None:
    usage = summary.get("usage_by_role")
    if not isinstance(usage, dict):
        usage = next((r.usage_total for r in reversed(events) if isinstance(r.usage_total, dict)), {})
    roles = [u for u in usage.values() if isinstance(u, dict)]
    info.calls = int(sum(_num(u.get("calls")) or 0 for u in roles))
    info.tokens = int(sum((_num(u.get("prompt_tokens")) or 0) + (_num(u.get("completion_tokens")) or 0) for u in roles))
    costs = [u.get("cost_usd") for u in roles]
    info.usd = float(sum(_num(c) or 0 for c in costs)) if roles and all(c is not None for c in costs) else None


def _status(info: RunInfo, path: Path, events: list[LoggedEvent]) -> None:
    times = [f.stat().st_mtime for f in path.iterdir() if f.is_file()] if path.is_dir() else []
    info.last_activity = max(times) if times else None
    finished = first_event(reversed(events), RunFinished)  # the last one
    at = max((i for i, r in enumerate(events) if isinstance(r.event, RunFinished)), default=-1)
    last_start = max((i for i, r in enumerate(events) if isinstance(r.event, RunStarted)), default=-1)
    done = finished is not None and at > last_start
    holder = lock_holder(path)
    if holder is not None:
        info.status, info.holder = "running", holder.describe()
        return
    has_lock = any((path / name).exists() for name in (LOCK_FILE, *LEGACY_LOCK_FILES))
    if not has_lock and not done and info.last_activity is not None and time.time() - info.last_activity < RECENT_S:
        info.status = "running"
        return
    if done:
        assert finished is not None
        info.stopped = finished.stopped or None
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
        cwd = config.get("cwd")
        # the command's relative paths (data, seed files) were read in the folder it was started in;
        # after a cd there, the run dir must be given whole. A folder that is gone (another checkout,
        # another machine) gets no cd: the line is then run from here.
        elsewhere = isinstance(cwd, str) and bool(cwd) and Path(cwd).is_dir() and \
            Path(cwd).resolve() != Path.cwd().resolve()
        run_dir = str(path.resolve()) if elsewhere else str(path)
        line = shlex.join(_without_option(args, "--run-dir") + ["--run-dir", run_dir])
        if elsewhere:
            line = f"cd {shlex.quote(str(cwd))} && {line}"
        return line, False
    rebuilt = rebuild_command(settings, path)
    return rebuilt, rebuilt is not None


def resume_refusal(settings: dict[str, Any], command: str | None,
                   command_settings: CommandSettings | None = None) -> str | None:
    """Why this version of FlowBot would refuse to resume a run with these saved settings, or None.

    The optimizer settings the resume would make — from ``command`` (a ``flowbot optimize`` line,
    read by ``command_settings``: the command line's own reading, which ``flowbot runs`` passes, see
    :func:`flowbot.cli.main.command_settings`), or for a run started from Python from the saved
    values, with today's defaults for settings the run predates — are compared with the saved ones
    the way the run directory compares them on resume (:func:`flowbot.optim.rundir.changed_settings`,
    legacy values allowed). Only the optimizer settings are checked: the task and the seed are not
    loaded. Without ``command_settings``, a run with a command is not judged (None)."""
    from flowbot.optim.rundir import RunDir, changed_settings

    saved = settings.get("optimize")
    if not isinstance(saved, dict) or (command and command_settings is None):
        return None
    try:
        new = command_settings(command) if command and command_settings else _settings_from_python(saved)
    except (FlowBotError, ValueError, TypeError) as exc:
        return f"not resumable with this version ({exc})"
    if new is None:
        return None
    changed = changed_settings(settings, {**settings, "optimize": new}, RunDir.MUTABLE)
    if not changed:
        return None
    return f"not resumable with this version (settings changed: {', '.join(changed)})"


def _settings_from_python(saved: dict[str, Any]) -> dict[str, Any]:
    """The optimizer settings of a run started from Python, given its saved values again: each saved
    value this version still has, today's defaults for the rest."""
    from flowbot.optim.driver import OptimizeConfig

    method = saved.get("method") if saved.get("method") in ("flowbot", "inner-only", "aflow") else "flowbot"
    return _overlay(_plain(OptimizeConfig(method=method).to_dict()), saved)


def _overlay(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in defaults.items():
        old = saved.get(key, value)
        out[key] = _overlay(value, old) if isinstance(value, dict) and isinstance(old, dict) else old
    return out


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


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
    args += _search_options(opt, method)
    if opt.get("evaluate_test") is False:
        args.append("--no-test")
    args += _budget_options(str(settings.get("budget") or ""))
    args += ["--run-dir", str(path)]
    return shlex.join(args)


def _search_options(opt: dict[str, Any], method: Any) -> list[str]:
    """The options for the settings of the search that differ from their defaults (budget scope,
    proposal policy and schedule, the inner step and its guard, demo sets and their bootstrapping,
    racing margin and level)."""
    from flowbot.optim.driver import BudgetConfig, RacingConfig
    from flowbot.optim.outer import OuterConfig

    out: list[str] = []
    scope = _dig(opt, "budget", "scope")
    if scope is not None and scope != BudgetConfig.scope:
        out += ["--budget-scope", str(scope)]
    if method not in ("inner-only", "aflow"):
        for option, key in (("--proposal", "proposal"), ("--schedule", "schedule")):
            value = _dig(opt, "outer", key)
            if value is not None and value != getattr(OuterConfig, key):
                out += [option, str(value)]
    if method != "aflow":
        from flowbot.optim.inner import InnerConfig

        for option, key in (("--step", "step"), ("--demo-sets", "demo_sets"), ("--demo-bootstrap", "demo_bootstrap"),
                            ("--demo-teacher", "demo_teacher")):
            value = _dig(opt, "inner", key)
            if value is not None and value != getattr(InnerConfig, key):
                out += [option, str(value)]
        if _dig(opt, "inner", "specificity_guard") is False:
            out.append("--no-specificity-guard")
    for option, key in (("--margin", "margin"), ("--alpha", "alpha")):
        value = _dig(opt, "racing", key)
        if value is not None and value != getattr(RacingConfig, key):
            out += [option, str(value)]
    return out


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
