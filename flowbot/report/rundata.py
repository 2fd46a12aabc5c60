"""Reading a run directory into one object the report can draw from.

The report must work for any run that left files behind: finished, stopped by a budget, killed
mid-way (no summary.json), resumed, seed only, inner-only or AFlow. So every piece is optional and
problems become ``warnings`` shown in the report instead of exceptions.

    >>> run = load_run("runs/gsm8k-flowbot-1a2b3c4d")        # doctest: +SKIP
    >>> [c["id"] for c in run.candidates]                      # doctest: +SKIP
    ['c0', 'c1', 'c2']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowbot.graph.io import WorkflowFileError, workflow_from_dict
from flowbot.graph.sketch import Workflow

#: events that describe outer-loop proposals (shown in the proposals table)
PROPOSAL_EVENTS = ("proposal", "candidate_rejected", "candidate_proposed", "edit_repaired")


class ReportError(ValueError):
    """The directory is not a FlowBot run directory."""


@dataclass
class UsageSeries:
    """Cumulative spend over the run, per role, in one unit ("usd" or "tokens").

    ``exact`` is True when the events carry cumulative meter snapshots (``usage_total``); otherwise
    the per-role lines hold only the spend that the log itemizes (seed evaluation, inner-loop steps)
    and ``totals`` / ``phase_points`` hold the exact figures known at a few points.
    """

    unit: str
    exact: bool
    x: list[int] = field(default_factory=list)  # event seq of each point
    by_role: dict[str, list[float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)  # run totals per role (summary.json)
    phase_points: list[tuple[int, float, str]] = field(default_factory=list)  # (seq, all-role total, phase)
    end_x: int = 0
    candidate_marks: list[tuple[int, str]] = field(default_factory=list)  # (seq, candidate id)

    def itemized_share(self) -> float | None:
        total = sum(self.totals.values())
        if not total or not self.by_role:
            return None
        return sum(v[-1] for v in self.by_role.values() if v) / total


@dataclass
class RunData:
    path: Path
    run_id: str | None = None
    sessions: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    seed_workflow: Workflow | None = None
    best_workflow: Workflow | None = None
    warnings: list[str] = field(default_factory=list)

    # -- plain facts ------------------------------------------------------------------------
    def first(self, kind: str) -> dict[str, Any]:
        return next((e for e in self.events if e.get("type") == kind), {})

    def of_type(self, *kinds: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") in kinds]

    @property
    def seed_scored(self) -> bool:
        """False when the log shows the run stopped before the seed's validation score existed."""
        if not self.events:
            return True  # no log to tell: trust summary.json
        return any(e.get("type") in ("seed_evaluated", "candidate_evaluated") for e in self.events)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def _pick(self, summary_key: str, event_key: str, setting_key: str) -> Any:
        if self.summary and self.summary.get(summary_key) is not None:
            return self.summary[summary_key]
        started = self.first("run_started")
        if started.get(event_key) is not None:
            return started[event_key]
        return self.settings.get(setting_key)

    @property
    def method(self) -> str:
        return str(self._pick("method", "method", "method") or "flowbot")

    @property
    def task(self) -> str:
        return str(self._pick("task", "task", "task") or "?")

    @property
    def task_model(self) -> str:
        return str(self._pick("task_model", "task_model", "model") or "?")

    @property
    def optimizer_model(self) -> str:
        return str(self._pick("optimizer_model", "optimizer_model", "optimizer_model") or "?")

    @property
    def best_id(self) -> str | None:
        if self.summary and (self.summary.get("best") or {}).get("id"):
            return self.summary["best"]["id"]
        finished = self.first("run_finished")
        if finished.get("best"):
            return finished["best"]
        accepted = self.of_type("candidate_accepted")
        if accepted:
            return accepted[-1].get("id")
        best = max(self.candidates, key=lambda c: _num(c.get("objective", c.get("val_score"))), default=None)
        return best["id"] if best else None

    @property
    def stopped(self) -> str | None:
        if self.summary is not None:
            return self.summary.get("stopped")
        finished = self.first("run_finished")
        if finished:
            return finished.get("stopped")
        return "the run did not finish (no summary.json): it was interrupted or is still running"

    @property
    def priced(self) -> bool:
        """Dollars are shown only when every role had a known price and something was spent."""
        usage = (self.summary or {}).get("usage_by_role") or {}
        if usage:
            costs = [u.get("cost_usd") for u in usage.values()]
            return all(c is not None for c in costs) and sum(costs) > 0
        return sum(_num(c.get("cost_per_example")) for c in self.candidates) > 0

    @property
    def front_ids(self) -> list[str]:
        if self.summary and self.summary.get("front"):
            return [f["id"] for f in self.summary["front"]]
        return pareto_ids(self.candidates, "usd" if self.priced else "tokens")

    @property
    def accepted_ids(self) -> list[str]:
        """Candidates that became the best so far when evaluated (AFlow logs none: derived)."""
        logged = [e["id"] for e in self.of_type("candidate_accepted") if "id" in e]
        if logged or not self.candidates:
            return logged
        out, best = [], float("-inf")
        for c in self.candidates:
            value = _num(c.get("objective", c.get("val_score")))
            if value > best:
                out.append(c["id"])
                best = value
        return out

    def inner_records(self) -> list[dict[str, Any]]:
        """Every inner_candidate event, tagged with the outer candidate it was tuning.

        The outer loop is sequential and a candidate is logged after its inner loop, so the inner
        events before a ``candidate_evaluated`` belong to that candidate.
        """
        out, pending = [], []
        for e in self.events:
            if e.get("type") == "inner_candidate":
                pending.append(dict(e))
            elif e.get("type") == "candidate_evaluated":
                for p in pending:
                    p["candidate"] = e.get("id")
                out += pending
                pending = []
        for p in pending:
            p["candidate"] = "(unfinished)"
        return out + pending

    def proposals(self) -> list[dict[str, Any]]:
        return self.of_type(*PROPOSAL_EVENTS)

    def unit(self) -> str:
        return "usd" if self.priced else "tokens"

    def candidate_cost(self, c: dict[str, Any]) -> float:
        return _num(c.get("cost_per_example")) if self.priced else _num(c.get("tokens_per_example"))

    def usage_series(self) -> UsageSeries:
        return usage_series(self)


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def usage_value(u: dict[str, Any] | None, unit: str) -> float:
    u = u or {}
    if unit == "usd":
        return _num(u.get("cost_usd"))
    return _num(u.get("prompt_tokens")) + _num(u.get("completion_tokens"))


def pareto_ids(candidates: list[dict[str, Any]], unit: str) -> list[str]:
    """Ids no other candidate beats on both score (higher) and cost per example (lower)."""
    key = "cost_per_example" if unit == "usd" else "tokens_per_example"
    pts = [(c["id"], _num(c.get("val_score")), _num(c.get(key))) for c in candidates]
    front = [i for i, s, k in pts
             if not any(s2 >= s and k2 <= k and (s2 > s or k2 < k) for _, s2, k2 in pts)]
    return front


# -- loading --------------------------------------------------------------------------------
def _read_json(path: Path, warnings: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name}: unreadable ({exc}); left out")
        return None


def _read_events(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"events.jsonl, line {lineno}: not JSON (a torn write?); the rest of the log is left out")
            break
        if isinstance(event, dict):
            events.append(event)
    return events


def _workflow(data: Any, source: str, warnings: list[str]) -> Workflow | None:
    if not isinstance(data, dict):
        return None
    try:
        if "format" in data or "schema_version" in data:
            return workflow_from_dict(data, source)
        return Workflow.model_validate(data)
    except (WorkflowFileError, ValidationError, ValueError) as exc:
        warnings.append(f"{source}: not a readable workflow ({str(exc).splitlines()[0]}); its picture is left out")
        return None


def _merge_candidates(events: list[dict[str, Any]], summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("type") == "candidate_evaluated" and "id" in e:
            by_id[e["id"]] = {k: v for k, v in e.items() if k not in ("workflow", "type")}
    for c in (summary or {}).get("candidates") or []:
        if "id" in c:
            by_id[c["id"]] = {**c, **by_id.get(c["id"], {})}
    return list(by_id.values())


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report shows, read from ``run_dir`` (raises ReportError if it holds no run)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    names = ("config.json", "events.jsonl", "summary.json")
    if not any((path / n).exists() for n in names):
        raise ReportError(f"{path} is not a FlowBot run directory (it has none of {', '.join(names)})")
    warnings: list[str] = []
    config = _read_json(path / "config.json", warnings) or {}
    run = RunData(path=path, run_id=config.get("run_id"), sessions=int(config.get("sessions", 1) or 1),
                  settings=config.get("config") or {}, warnings=warnings)
    run.events = _read_events(path / "events.jsonl", warnings)
    summary = _read_json(path / "summary.json", warnings)
    run.summary = summary if isinstance(summary, dict) else None
    run.candidates = _merge_candidates(run.events, run.summary)
    if not run.seed_scored:
        # the driver records the unscored seed as c0 with score 0; showing that would be a fiction
        run.candidates = []
        warnings.append("the budget ran out before the seed was scored on validation: no scores to show")
    for e in run.events:  # workflows logged with their candidate (flowbot, inner-only)
        if e.get("type") == "candidate_evaluated" and isinstance(e.get("workflow"), dict):
            wf = _workflow(e["workflow"], f"events.jsonl (seq {e.get('seq')})", warnings)
            if wf is not None:
                run.workflows[e["id"]] = wf
    wdir = path / "workflows"
    if wdir.is_dir():
        for file in sorted(wdir.glob("*.json")):
            wf = _workflow(_read_json(file, warnings), f"workflows/{file.name}", warnings)
            if wf is not None:
                run.workflows[file.stem] = wf
    run.seed_workflow = _workflow(run.settings.get("seed_workflow"), "config.json (seed_workflow)", warnings) \
        or run.workflows.get("c0")
    run.best_workflow = _workflow(_read_json(path / "best.json", warnings), "best.json", warnings)
    if run.best_workflow is None and run.best_id:
        run.best_workflow = run.workflows.get(run.best_id)
    return run


# -- cumulative spend --------------------------------------------------------------------------
def usage_series(run: RunData) -> UsageSeries:
    unit = run.unit()
    summary = run.summary or {}
    totals = {r: usage_value(u, unit) for r, u in (summary.get("usage_by_role") or {}).items()}
    end_x = max((int(e.get("seq", 0)) for e in run.events), default=0)
    series = UsageSeries(unit=unit, exact=False, totals=totals, end_x=end_x,
                         candidate_marks=[(int(e.get("seq", 0)), str(e.get("id")))
                                          for e in run.of_type("candidate_evaluated")])
    snapshots = [e for e in run.events if isinstance(e.get("usage_total"), dict)]
    if snapshots:
        series.exact = True
        _add_point(series, 0, {})
        for e in snapshots:
            _add_point(series, int(e.get("seq", 0)),
                       {r: usage_value(u, unit) for r, u in e["usage_total"].items()})
        return series
    # itemized reconstruction: only what the log attributes to a role
    running: dict[str, float] = {}
    _add_point(series, 0, {})
    for e in run.events:
        kind = e.get("type")
        if kind == "seed_evaluated" and unit == "tokens":
            running["task"] = running.get("task", 0.0) + _num(e.get("tokens"))
        elif kind == "inner_step" and isinstance(e.get("usage"), dict):
            for role, u in e["usage"].items():
                running[role] = running.get(role, 0.0) + usage_value(u, unit)
        else:
            continue
        _add_point(series, int(e.get("seq", 0)), dict(running))
    series.phase_points = _phase_points(run, unit)
    return series


def _add_point(series: UsageSeries, x: int, values: dict[str, float]) -> None:
    series.x.append(x)
    n = len(series.x)
    for role in set(series.by_role) | set(values):
        line = series.by_role.setdefault(role, [0.0] * (n - 1))
        line.append(values.get(role, line[-1] if line else 0.0))


def _phase_points(run: RunData, unit: str) -> list[tuple[int, float, str]]:
    """Exact all-role totals at the end of the seed, search and test phases (summary.json)."""
    phases = (run.summary or {}).get("usage_by_phase") or {}
    if not phases:
        return []

    def value(p: dict[str, Any]) -> float:
        return _num(p.get("cost_usd")) if unit == "usd" else _num(p.get("tokens"))

    seed_ev = run.first("seed_evaluated")
    tests = run.of_type("test_evaluated")
    finished = run.first("run_finished")
    end = int(finished.get("seq", 0)) or max((int(e.get("seq", 0)) for e in run.events), default=0)
    search_end = int(tests[0]["seq"]) - 1 if tests else end
    points, total = [], 0.0
    for name, x in (("seed", int(seed_ev.get("seq", 0))), ("search", search_end), ("test", end)):
        if name in phases and x:
            total += value(phases[name])
            points.append((x, total, name))
    return points
