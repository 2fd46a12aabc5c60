"""Resuming a run: the event log's replay, and resumes after a hard kill (no STOP file) — a torn
last event line, a cache killed mid-transaction, a larger budget, a time budget partly spent."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time as real_time
from pathlib import Path
from types import SimpleNamespace

import flowbot
from flowbot.lm import Budget
from flowbot.optim import rundir
from flowbot.optim.rundir import CRASH_ENV, EventLog, read_event_log

from .scripted_runs import (case_optimizer, case_task, case_task_lm, optimizer_lm, prepare, request_key,
                            task_lm)


def test_replay_compares_whole_events_and_cuts_the_log_where_one_differs(tmp_path):
    path = tmp_path / "events.jsonl"
    first = [{"type": "run_started", "resumed": False, "budget": "10 calls"},
             {"type": "inner_candidate", "accepted": False, "reason": "no gain on the minibatch",
              "usage_total": {"task": {"calls": 3, "replayed_calls": 0}}},
             {"type": "inner_step", "step": 1, "val_score": 0.5},
             {"type": "run_finished", "best": "c0"}]
    log = EventLog(path)
    for event in first:
        log(event)
    logged = read_event_log(path)[0]
    assert [e["seq"] for e in logged] == [1, 2, 3, 4] and all("time" in e for e in logged)

    again, seen = EventLog(path), []
    again.listeners.append(lambda event, replayed: seen.append((event["type"], replayed)))
    # what a session may change: when, the usage counted so far (replayed now), and its own start
    again({**first[0], "resumed": True, "budget": "20 calls"})
    again({**first[1], "usage_total": {"task": {"calls": 3, "replayed_calls": 3}}})
    assert (again.replayed, again.diverged_at) == (2, None)
    # the same type with another outcome is another event: the log is cut there, the rest is new
    again({**first[2], "val_score": 1.0})
    assert (again.replayed, again.diverged_at) == (2, 3)
    again({"type": "run_finished", "best": "c1"})
    events = read_event_log(path)[0]
    assert events[:2] == logged[:2]
    assert [(e["seq"], e["type"]) for e in events] == [(1, "run_started"), (2, "inner_candidate"),
                                                        (3, "inner_step"), (4, "run_finished")]
    assert events[2]["val_score"] == 1.0 and events[3]["best"] == "c1"
    assert seen == [("run_started", True), ("inner_candidate", True), ("inner_step", False), ("run_finished", False)]


def test_an_event_that_differs_in_any_field_is_not_replayed(tmp_path):
    logged = {"type": "candidate_evaluated", "id": "c1", "race": {"wins": 3, "losses": 0}, "nodes": 2}
    for i, changed in enumerate(({"id": "c2"}, {"race": {"wins": 3, "losses": 1}}, {"nodes": 3}, {"extra": None})):
        path = tmp_path / f"case{i}" / "events.jsonl"
        path.parent.mkdir()
        EventLog(path)(logged)
        again = EventLog(path)
        again({**logged, **changed})
        assert (again.diverged_at, again.replayed) == (1, 0), changed
        (event,) = read_event_log(path)[0]
        assert {k: v for k, v in event.items() if k != "time"} == {"seq": 1, **logged, **changed}


# -- resumes after a hard kill -----------------------------------------------------------------
RUNS = Path(__file__).with_name("scripted_runs.py")
#: what may differ between a run and its resumed twin: when each event was logged, the usage counted
#: so far (a replayed call counts as replayed), and the session's own start and limits
SESSION = {"run_started": ("resumed", "budget"), "budget_plan": ("search",)}


def comparable(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("time", "usage_total", *SESSION.get(e["type"], ()))}
            for e in events]


def logged_events(run: Path) -> list[dict]:
    events, torn = read_event_log(run / "events.jsonl")
    assert torn is None, f"events.jsonl has a torn line {torn}"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def keys(provider) -> list[str]:
    return [request_key(r) for r in provider.calls]


def killed_run(tmp_path: Path, crash: str | None = None, **spec) -> list[str]:
    """Run the optimization in a child process that SIGKILLs itself at ``crash`` (FLOWBOT_CRASH_AT)
    or as ``spec`` says; returns the requests it paid for."""
    calls = tmp_path / "killed_calls.jsonl"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"dir": str(tmp_path), "calls": str(calls), **spec}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(flowbot.__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    proc = subprocess.run([sys.executable, str(RUNS), str(spec_path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()
    return calls.read_text().splitlines()


async def reference(tmp_path: Path, **kw):
    t, o = task_lm(), optimizer_lm()
    result = await prepare(tmp_path / "reference", t, o, **kw).arun()
    return result, logged_events(tmp_path / "reference" / "run"), keys(t) + keys(o)


async def test_a_torn_last_event_line_is_dropped_and_the_run_resumes_as_if_never_killed(tmp_path):
    ref, ref_events, ref_calls = await reference(tmp_path)
    kill_at = next(e["seq"] for e in ref_events if e["type"] == "candidate_evaluated" and e["id"] == "c1")
    killed = killed_run(tmp_path, crash=f"events:{kill_at}")
    run = tmp_path / "run"
    events, torn = read_event_log(run / "events.jsonl")
    assert torn == kill_at and len(events) == kill_at - 1  # half of the line was written
    assert comparable(events) == comparable(ref_events[: kill_at - 1])

    t, o = task_lm(), optimizer_lm()
    resumed = await prepare(tmp_path, t, o).arun()
    assert resumed.resumed and resumed.replayed_events == kill_at - 1 and resumed.stopped is None
    assert comparable(logged_events(run)) == comparable(ref_events)
    assert (resumed.best_id, resumed.val_score, resumed.test_score) == (ref.best_id, ref.val_score, ref.test_score)
    assert resumed.best.sketch.signature() == ref.best.sketch.signature()
    # nothing the killed session paid for is paid again, and together they paid what one run pays
    assert not set(killed) & set(keys(t) + keys(o))
    assert sorted(killed + keys(t) + keys(o)) == sorted(ref_calls)
    assert resumed.usage["task"]["calls"] == ref.usage["task"]["calls"]
    assert resumed.usage["optimizer"]["calls"] == ref.usage["optimizer"]["calls"]


async def test_a_cache_killed_mid_transaction_keeps_what_was_committed_and_repays_one_request(tmp_path):
    ref, ref_events, ref_calls = await reference(tmp_path)
    killed = killed_run(tmp_path, kill_in_cache_put=12)
    assert len(killed) == 12  # the twelfth response was paid, then the process died writing it
    cache = sqlite3.connect(tmp_path / "run" / "cache.sqlite")
    try:
        assert cache.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert cache.execute("SELECT COUNT(*) FROM responses").fetchone() == (11,)
        assert cache.execute("SELECT COUNT(*) FROM responses WHERE key LIKE 'junk%'").fetchone() == (0,)
    finally:
        cache.close()

    t, o = task_lm(), optimizer_lm()
    resumed = await prepare(tmp_path, t, o).arun()
    assert comparable(logged_events(tmp_path / "run")) == comparable(ref_events)
    assert (resumed.best_id, resumed.val_score, resumed.test_score) == (ref.best_id, ref.val_score, ref.test_score)
    # only the request whose answer was lost with the transaction is paid twice
    assert set(killed) & set(keys(t) + keys(o)) == {killed[-1]}
    assert sorted(killed[:-1] + keys(t) + keys(o)) == sorted(ref_calls)


async def test_a_run_killed_and_resumed_with_a_larger_budget_is_the_run_of_that_budget(tmp_path):
    """Under 52 calls the seed's rewrite (which gives the step a tool: two calls an example) cannot be
    raced and is logged as not fitting; killed after that, resumed with 400, the same rewrite is
    raced and wins. The log, the result and the usage are those of a run made with 400 from the
    start (replay compares whole events: by type alone, the logged rejection would stand), and
    nothing is paid twice."""
    case = dict(task=case_task(n_test=6, tools=["calculator"]), method="inner-only", inner={"steps": 2, "demos": 0})
    t, o = case_task_lm(), case_optimizer(tool=True)
    ref = await prepare(tmp_path / "reference", t, o, budget={"calls": 400}, **case).arun()
    ref_events, ref_calls = logged_events(tmp_path / "reference" / "run"), keys(t) + keys(o)
    small = await prepare(tmp_path / "small", case_task_lm(), case_optimizer(tool=True), budget={"calls": 52},
                          **case).arun()
    small_events = logged_events(tmp_path / "small" / "run")
    rejected = next(e for e in small_events if e["type"] == "inner_candidate")
    accepted = next(e for e in ref_events if e["type"] == "inner_candidate")
    assert rejected["seq"] == accepted["seq"] and not rejected["accepted"] and accepted["accepted"]
    assert "do not fit in the budget left" in rejected["reason"] and small.val_score == 0.0 and ref.val_score == 1.0

    killed = killed_run(tmp_path, crash=f"events:{rejected['seq'] + 1}", task="case",
                        options={"budget": {"calls": 52}, "method": "inner-only", "inner": {"steps": 2, "demos": 0}})
    # the killed session had logged the rejection (and torn the next line)
    logged = read_event_log(tmp_path / "run" / "events.jsonl")[0]
    assert comparable(logged) == comparable(small_events[: rejected["seq"]])
    t, o = case_task_lm(), case_optimizer(tool=True)
    resumed = await prepare(tmp_path, t, o, budget={"calls": 400}, **case).arun()
    events = logged_events(tmp_path / "run")
    assert comparable(events) == comparable(ref_events)
    assert resumed.replayed_events == rejected["seq"] - 1  # up to the rewrite the larger budget races
    assert (resumed.val_score, resumed.test_score) == (ref.val_score, ref.test_score) == (1.0, 1.0)
    assert resumed.best.params["solve"] == ref.best.params["solve"]
    assert resumed.best.params["solve"].tools == ["calculator"]
    assert resumed.usage["task"]["calls"] == ref.usage["task"]["calls"]
    assert not set(killed) & set(keys(t) + keys(o))
    assert sorted(keys(t) + keys(o)) == sorted(set(ref_calls) - set(killed))


async def test_a_run_killed_after_spending_part_of_its_time_resumes_with_only_the_rest(tmp_path, monkeypatch):
    """The killed session's clock ran 10 s per event; its time counts up to its last logged event
    (sessions.json), so the resumed session starts with that much of its time budget spent."""
    killed_run(tmp_path, crash="events:9", clock={"start": 1000.0, "tick": 10.0, "max_seconds": 95})
    sessions = json.loads((tmp_path / "run" / "sessions.json").read_text())
    spent_before = sessions[0]["last"] - sessions[0]["start"]
    assert spent_before == 70.0  # events 1..8 were logged, 10 s apart

    now = [50_000.0]  # the resumed session starts much later on the wall clock
    clock = lambda: now[0]  # noqa: E731 -- one fake clock for the budget and the run directory
    monkeypatch.setattr(rundir, "time", SimpleNamespace(time=clock, monotonic=real_time.monotonic,
                                                        sleep=real_time.sleep))
    budget = Budget(max_seconds=95, clock=clock)  # the same budget: 25 s of it left
    elapsed_in_replay, new = [], []

    def tick(event: dict) -> None:  # replayed events take no time; each new one 10 s
        if event["replayed"]:
            elapsed_in_replay.append(budget.elapsed())
        else:
            new.append(event["type"])
            now[0] += 10.0

    t, o = task_lm(), optimizer_lm()
    resumed = await prepare(tmp_path, t, o, budget=budget).arun([tick])
    assert elapsed_in_replay == [spent_before] * 8
    assert resumed.stopped == "run time budget of 95 s is used up"
    # 25 s left: the child raced before the kill is replayed from the cache and logged (20 s), its
    # tuning's first step pays its minibatch (5 calls) and logs (30 s), then no call is allowed: a
    # budget restarted from zero would have paid for the rest of the run and its test
    assert new == ["candidate_evaluated", "candidate_accepted", "inner_step", "budget_warning", "run_finished"]
    assert (len(t.calls), len(o.calls)) == (5, 0) and resumed.test is None
    warning = logged_events(tmp_path / "run")[-2]
    assert warning["message"] == "test evaluation incomplete: run time budget of 95 s is used up"
    assert resumed.best_id == "c1" and resumed.val_score == 1.0 and resumed.best.sketch.node_ids()[0] == "write_program"
    assert resumed.summary["budget"]["spent"]["seconds"] == spent_before + 10 * 4
