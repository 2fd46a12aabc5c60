"""Reading run events back (flowbot.optim.events.read_event): every class round-trips, what the
log adds is kept apart, fields older versions did not write take their defaults, types this version
does not know stay readable, and what this version writes does not change with the legacy fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flowbot.optim import events as ev


def sample(cls: type[ev.Event]) -> ev.Event:
    """An instance with every field set to a value of its own (legacy fields included)."""
    return cls(**{f.name: f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("cls", list(ev.READABLE_TYPES.values()), ids=lambda c: c.__name__)
def test_every_class_reads_back_as_itself_with_its_place_in_the_log(cls):
    e = sample(cls)
    line = json.loads(json.dumps({"seq": 7, **e.to_dict(), "usage_total": {"task": {"calls": 3}}, "time": 1.5}))
    rec = ev.read_event(line)
    assert rec.event == e and type(rec.event) is cls and rec.type == cls.type
    assert (rec.seq, rec.time, rec.usage_total, rec.replayed) == (7, 1.5, {"task": {"calls": 3}}, False)
    assert rec.present == {f.name for f in dataclasses.fields(cls)} and not rec.extra
    assert rec.to_dict() == line
    assert ev.read_event({**line, "replayed": True}).replayed
    assert ev.read_event(rec) is rec


def test_the_logged_type_names_are_unique_and_legacy_ones_are_not_emitted():
    emitted, legacy = set(ev.EVENT_TYPES), set(ev.LEGACY_EVENT_TYPES)
    assert not emitted & legacy and len(ev.READABLE_TYPES) == len(emitted) + len(legacy)
    assert all(ev.READABLE_TYPES[name].type == name for name in ev.READABLE_TYPES)


def test_legacy_fields_are_read_but_never_written_unset():
    rejected = ev.CandidateRejected(parent="c0", edit="remove_node(x)", reason="raced out")
    assert list(rejected.to_dict()) == ["type", "parent", "edit", "reason", "method"]  # as before they existed
    evaluated = ev.CandidateEvaluated(id="c1", parent="c0", edit="e", val_score=0.5, cost_per_example=0.0,
                                      tokens_per_example=10.0, nodes=2, race=None, workflow={})
    assert "blame" not in evaluated.to_dict() and "inner_stopped" not in evaluated.to_dict()
    old = ev.read_event({"seq": 9, "type": "candidate_rejected", "parent": "c0", "reason": "invalid",
                         "error": "no node x", "first_error": "no field y"})
    assert isinstance(old.event, ev.CandidateRejected)
    assert (old.event.error, old.event.first_error, old.event.edit) == ("no node x", "no field y", None)


def test_missing_fields_take_their_defaults_or_none_and_are_not_present():
    rec = ev.read_event({"type": "candidate_evaluated", "id": "c9", "val_score": "n/a"})
    e = rec.event
    assert isinstance(e, ev.CandidateEvaluated) and e.id == "c9" and e.val_score == "n/a"  # as logged
    assert e.parent is None and e.inner_steps == 0 and e.method == "flowbot" and e.workflow is None
    assert rec.has("id") and not rec.has("parent") and rec.seq is None
    assert rec.to_dict() == {"type": "candidate_evaluated", "id": "c9", "val_score": "n/a"}
    bare = ev.read_event({"type": "inner_candidate"})
    assert isinstance(bare.event, ev.InnerCandidate) and bare.event.cost == {} and bare.present == frozenset()


@pytest.mark.parametrize("line", [
    {"seq": 3, "type": "from_a_newer_flowbot", "payload": [1, 2]}, {"no_type": True}, {"type": 5, "x": 1}, {},
])
def test_unknown_types_stay_readable(line):
    rec = ev.read_event(line)
    assert isinstance(rec.event, ev.UnknownEvent)
    assert rec.to_dict() == line
    assert rec.type == (line["type"] if isinstance(line.get("type"), str) else None)


def test_fields_a_newer_version_adds_are_kept_apart():
    rec = ev.read_event({"type": "budget_warning", "message": "low", "severity": "high"})
    assert rec.event == ev.BudgetWarning(message="low") and rec.extra == {"severity": "high"}
    assert rec.to_dict() == {"type": "budget_warning", "message": "low", "severity": "high"}


def test_parse_event_stays_strict():
    assert ev.parse_event(ev.BudgetWarning("x").to_dict()) == ev.BudgetWarning("x")
    assert isinstance(ev.parse_event({"type": "candidate_evaluated", "id": "c1"}), dict)


def test_first_event_and_typed_callback():
    recs = [ev.read_event(d) for d in ({"type": "budget_warning", "message": "a"},
                                       {"type": "run_finished", "best": "c1", "val_score": 0.5, "test_score": None,
                                        "stopped": None},
                                       {"type": "budget_warning", "message": "b"})]
    assert ev.first_event(recs, ev.BudgetWarning).message == "a"
    assert ev.first_event(reversed(recs), ev.BudgetWarning).message == "b"
    assert ev.first_event(recs, ev.SeedEvaluated) is None
    got = []
    ev.typed_callback(got.append)({"seq": 1, "type": "seed_evaluated", "val_score": 0.5, "calls": 2, "tokens": 9,
                                   "cost_usd": None, "replayed": True})
    assert got[0].replayed and got[0].event == ev.SeedEvaluated(val_score=0.5, calls=2, tokens=9, cost_usd=None)
