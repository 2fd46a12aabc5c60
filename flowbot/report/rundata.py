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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowbot.errors import FlowBotError
from flowbot.graph.io import WorkflowFileError, workflow_from_dict
from flowbot.graph.sketch import Workflow
from flowbot.optim.archive import non_dominated
from flowbot.optim.events import (CandidateAccepted, CandidateEvaluated, CandidateProposed, CandidateRejected,
                                  EditRepaired, Event, EventT, InnerCandidate, InnerStep, LoggedEvent, ProposalMade,
                                  RunFinished, RunStarted, SeedEvaluated, TestEvaluated, first_event, read_event)
from flowbot.optim.rundir import read_event_log

#: events that describe outer-loop proposals (shown in the proposals table)
PROPOSAL_EVENTS: tuple[type[Event], ...] = (ProposalMade, CandidateRejected, CandidateProposed, EditRepaired)
#: the test split example by example, best beside seed (written by the API after the test evaluation)
TEST_EXAMPLES = "test_examples.jsonl"


class ReportError(FlowBotError):
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
    x: list[int] = field(default_factory=list)  # paid calls so far (exact), else the event seq of each point
    by_role: dict[str, list[float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)  # run totals per role (summary.json)
    phase_points: list[tuple[int, float, str]] = field(default_factory=list)  # (seq, all-role total, phase)
    end_x: int = 0
    candidate_marks: list[tuple[int, str]] = field(default_factory=list)  # (x, candidate id)

    @property
    def x_label(self) -> str:
        if self.exact:
            return "paid LM calls so far, all roles (grey lines: candidates scored)"
        return "event number in the run log (grey lines: candidates scored)"

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
    events: list[LoggedEvent] = field(default_factory=list)  # the log, typed (see flowbot.optim.events)
    summary: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    seed_workflow: Workflow | None = None
    best_workflow: Workflow | None = None
    test_examples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    # -- plain facts ------------------------------------------------------------------------
    def logged(self, *classes: type[EventT]) -> list[LoggedEvent[EventT]]:
        """The log's events of these classes, with their place in the log (seq, usage_total, ...)."""
        return [r for r in self.events if isinstance(r.event, classes)]

    def of_type(self, cls: type[EventT]) -> list[EventT]:
        return [r.event for r in self.events if isinstance(r.event, cls)]

    def first(self, cls: type[EventT]) -> EventT | None:
        return first_event(self.events, cls)

    @property
    def seed_scored(self) -> bool:
        """False when the log shows the run stopped before the seed's validation score existed."""
        if not self.events:
            return True  # no log to tell: trust summary.json
        return any(isinstance(r.event, (SeedEvaluated, CandidateEvaluated)) for r in self.events)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def _pick(self, summary_key: str, logged: Any, setting_key: str) -> Any:
        if self.summary and self.summary.get(summary_key) is not None:
            return self.summary[summary_key]
        if logged is not None:
            return logged
        return self.settings.get(setting_key)

    @property
    def method(self) -> str:
        started = self.first(RunStarted)
        return str(self._pick("method", started.method if started else None, "method") or "flowbot")

    @property
    def task(self) -> str:
        started = self.first(RunStarted)
        return str(self._pick("task", started.task if started else None, "task") or "?")

    @property
    def task_model(self) -> str:
        started = self.first(RunStarted)
        return str(self._pick("task_model", started.task_model if started else None, "model") or "?")

    @property
    def optimizer_model(self) -> str:
        started = self.first(RunStarted)
        return str(self._pick("optimizer_model", started.optimizer_model if started else None,
                              "optimizer_model") or "?")

    @property
    def best_id(self) -> str | None:
        if self.summary and (self.summary.get("best") or {}).get("id"):
            return self.summary["best"]["id"]
        finished = self.first(RunFinished)
        if finished is not None and finished.best:
            return finished.best
        accepted = self.of_type(CandidateAccepted)
        if accepted:
            return accepted[-1].id
        best = max((c for c in self.candidates if scored(c)),
                   key=lambda c: _num(c.get("objective", c.get("val_score"))), default=None)
        return best["id"] if best else None

    @property
    def stopped(self) -> str | None:
        if self.summary is not None:
            return self.summary.get("stopped")
        finished = self.first(RunFinished)
        if finished is not None:
            return finished.stopped
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
        """The candidates on the front of exactly what the report plots (validation score against
        the cost per example in the report's unit), so the label never disagrees with the picture."""
        return pareto_ids(self.candidates, self.unit())

    @property
    def accepted_ids(self) -> list[str]:
        """Candidates that became the best so far when evaluated (AFlow logs none: derived)."""
        logged = [r.event.id for r in self.logged(CandidateAccepted) if r.has("id")]
        if logged or not self.candidates:
            return logged
        out, best = [], float("-inf")
        for c in filter(scored, self.candidates):
            value = _num(c.get("objective", c.get("val_score")))
            if value > best:
                out.append(c["id"])
                best = value
        return out

    def inner_records(self) -> list[InnerCandidate]:
        """Every inner-loop candidate, its ``candidate`` set to the outer candidate it was tuning.

        The outer loop is sequential and a candidate is logged after its inner loop, so the inner
        events before a :class:`CandidateEvaluated` belong to that candidate.
        """
        out: list[InnerCandidate] = []
        pending: list[InnerCandidate] = []
        for r in self.events:
            if isinstance(r.event, InnerCandidate):
                pending.append(r.event)
            elif isinstance(r.event, CandidateEvaluated):
                out += [replace(p, candidate=r.event.id) for p in pending]
                pending = []
        return out + [replace(p, candidate="(unfinished)") for p in pending]

    def proposals(self) -> list[LoggedEvent]:
        return self.logged(*PROPOSAL_EVENTS)

    def unit(self) -> str:
        return "usd" if self.priced else "tokens"

    def candidate_cost(self, c: dict[str, Any]) -> float:
        return _num(c.get("cost_per_example")) if self.priced else _num(c.get("tokens_per_example"))

    def usage_series(self) -> UsageSeries:
        return usage_series(self)

    def phase_usage(self) -> tuple[dict[str, dict[str, Any]], bool]:
        """Calls, tokens and dollars per phase (seed, search, test), and whether they cover every
        session: from the log's cumulative meter snapshots (a resumed session re-charges what
        earlier sessions paid, so its snapshots count every session), else summary.json's figures
        of the last session."""
        return phase_usage(self)


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


def scored(c: dict[str, Any]) -> bool:
    """Was the candidate scored on every validation item? A race stopped early leaves no score (its
    results cover the items raced, the incumbent's misses first), which is not a score of zero."""
    return c.get("val_score") is not None


def race_text(c: dict[str, Any]) -> str:
    """What a raced-out candidate has instead of a score, e.g. ``raced out: 3W/2L after 24 of 50``."""
    race = c.get("race") or {}
    if not race.get("evaluated"):
        return "not scored"
    return f"raced out: {race.get('wins', 0)}W/{race.get('losses', 0)}L after {race['evaluated']} of {race.get('total', '?')}"


def pareto_ids(candidates: list[dict[str, Any]], unit: str) -> list[str]:
    """Ids no other scored candidate beats on both score (higher) and cost per example (lower) in
    ``unit``; a raced-out candidate has no score and is on no front."""
    key = "cost_per_example" if unit == "usd" else "tokens_per_example"
    return non_dominated((c["id"], _num(c.get("val_score")), _num(c.get(key))) for c in candidates if scored(c))


# -- loading --------------------------------------------------------------------------------
def _read_json(path: Path, warnings: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name}: unreadable ({exc}); left out")
        return None


def _read_events(path: Path, warnings: list[str]) -> list[LoggedEvent]:
    if not path.exists():
        return []
    events, torn = read_event_log(path)
    if torn is not None:
        warnings.append(f"events.jsonl, line {torn}: not JSON (a torn write?); the rest of the log is left out")
    return [read_event(e) for e in events if isinstance(e, dict)]


def seq_of(r: LoggedEvent) -> int:
    """An event's number in the log (0 when it has none)."""
    return int(_num(r.seq))


def _read_jsonl(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"{path.name}, line {lineno}: not JSON; the rest of the file is left out")
            break
        if isinstance(row, dict) and "id" in row:
            rows.append(row)
    return rows


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


def _merge_candidates(events: list[LoggedEvent], summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for r in events:
        if isinstance(r.event, CandidateEvaluated) and r.has("id"):
            by_id[r.event.id] = {k: v for k, v in r.to_dict().items() if k not in ("workflow", "type")}
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
    for r in run.logged(CandidateEvaluated):  # workflows logged with their candidate (flowbot, inner-only)
        if r.has("id") and isinstance(r.event.workflow, dict):
            wf = _workflow(r.event.workflow, f"events.jsonl (seq {r.seq})", warnings)
            if wf is not None:
                run.workflows[r.event.id] = wf
    wdir = path / "workflows"
    if wdir.is_dir():
        for file in sorted(wdir.glob("*.json")):
            wf = _workflow(_read_json(file, warnings), f"workflows/{file.name}", warnings)
            if wf is not None:
                run.workflows[file.stem] = wf
    run.seed_workflow = _workflow(run.settings.get("seed_workflow"), "config.json (seed_workflow)", warnings) \
        or run.workflows.get("c0")
    run.test_examples = _read_jsonl(path / TEST_EXAMPLES, warnings)
    run.best_workflow = _workflow(_read_json(path / "best.json", warnings), "best.json", warnings)
    if run.best_workflow is None and run.best_id:
        run.best_workflow = run.workflows.get(run.best_id)
    return run


# -- cumulative spend --------------------------------------------------------------------------
def usage_series(run: RunData) -> UsageSeries:
    unit = run.unit()
    summary = run.summary or {}
    totals = {r: usage_value(u, unit) for r, u in (summary.get("usage_by_role") or {}).items()}
    end_x = max((seq_of(r) for r in run.events), default=0)
    series = UsageSeries(unit=unit, exact=False, totals=totals, end_x=end_x,
                         candidate_marks=[(seq_of(r), str(r.event.id)) for r in run.logged(CandidateEvaluated)])
    snapshots = [r for r in run.events if isinstance(r.usage_total, dict)]
    if snapshots:  # exact, and plotted over paid calls: the x of every point is the calls so far
        series.exact = True
        series.candidate_marks = [(paid_calls(r.usage_total), str(r.event.id)) for r in snapshots
                                  if isinstance(r.event, CandidateEvaluated)]
        _add_point(series, 0, {})
        for r in snapshots:
            _add_point(series, paid_calls(r.usage_total),
                       {role: usage_value(u, unit) for role, u in r.usage_total.items() if isinstance(u, dict)})
        series.end_x = series.x[-1]
        return series
    # itemized reconstruction: only what the log attributes to a role
    running: dict[str, float] = {}
    _add_point(series, 0, {})
    for r in run.events:
        ev = r.event
        if isinstance(ev, SeedEvaluated) and unit == "tokens":
            running["task"] = running.get("task", 0.0) + _num(ev.tokens)
        elif isinstance(ev, InnerStep) and isinstance(ev.usage, dict):
            for role, u in ev.usage.items():
                running[role] = running.get(role, 0.0) + usage_value(u, unit)
        else:
            continue
        _add_point(series, seq_of(r), dict(running))
    series.phase_points = _phase_points(run, unit)
    return series


def paid_calls(usage_total: dict[str, Any]) -> int:
    """Paid LM calls so far, all roles, in a meter snapshot."""
    return int(sum(_num(u.get("calls")) for u in usage_total.values() if isinstance(u, dict)))


def _snapshot_total(usage_total: dict[str, Any]) -> dict[str, Any]:
    roles = [u for u in usage_total.values() if isinstance(u, dict)]
    costs = [u.get("cost_usd") for u in roles]
    return {"calls": int(sum(_num(u.get("calls")) for u in roles)),
            "tokens": int(sum(_num(u.get("prompt_tokens")) + _num(u.get("completion_tokens")) for u in roles)),
            "cost_usd": sum(_num(c) for c in costs) if all(c is not None for c in costs) else None}


def log_is_whole(events: list[LoggedEvent]) -> bool:
    """The log's events are numbered 1, 2, 3, ... with none missing (a log with holes, e.g. from a
    file restored while the run wrote to it, cannot say where a phase ended)."""
    return [r.seq for r in events] == list(range(1, len(events) + 1))


def phase_usage(run: RunData) -> tuple[dict[str, dict[str, Any]], bool]:
    snaps = [r for r in run.events if isinstance(r.usage_total, dict)]
    seed = next((r for r in snaps if isinstance(r.event, SeedEvaluated)), None)
    if not snaps or seed is None or not log_is_whole(run.events):
        return dict((run.summary or {}).get("usage_by_phase") or {}), False
    first_test = next((i for i, r in enumerate(snaps) if isinstance(r.event, TestEvaluated)), None)
    search_end = snaps[first_test - 1] if first_test else snaps[-1]
    finished = next((r for r in reversed(snaps) if isinstance(r.event, RunFinished)), snaps[-1])
    zero = {"calls": 0, "tokens": 0, "cost_usd": 0.0}
    points = [("seed", _snapshot_total(seed.usage_total)), ("search", _snapshot_total(search_end.usage_total))]
    if first_test is not None:
        points.append(("test", _snapshot_total(finished.usage_total)))
    phases, before = {}, zero
    for name, total in points:
        cost = None if total["cost_usd"] is None or before["cost_usd"] is None else \
            round(total["cost_usd"] - before["cost_usd"], 9)
        phases[name] = {"calls": total["calls"] - before["calls"], "tokens": total["tokens"] - before["tokens"],
                        "cost_usd": cost}
        before = total
    return phases, True


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

    seed_ev = next(iter(run.logged(SeedEvaluated)), None)
    tests = run.logged(TestEvaluated)
    finished = next(iter(run.logged(RunFinished)), None)
    end = (seq_of(finished) if finished else 0) or max((seq_of(r) for r in run.events), default=0)
    search_end = seq_of(tests[0]) - 1 if tests else end
    points, total = [], 0.0
    for name, x in (("seed", seq_of(seed_ev) if seed_ev else 0), ("search", search_end), ("test", end)):
        if name in phases and x:
            total += value(phases[name])
            points.append((x, total, name))
    return points
