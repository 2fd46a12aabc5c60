"""Resuming a run: the event log's replay, and resumes after a hard kill (no STOP file) — a torn
last event line, a cache killed mid-transaction, a larger budget, a time budget partly spent."""

from __future__ import annotations

from flowbot.optim.rundir import EventLog, read_event_log


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
