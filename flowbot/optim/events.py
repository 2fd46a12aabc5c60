"""The run's events, typed. The loops emit these objects; the run directory logs them as JSON lines
(``{"type": ..., ...}``); the progress display, the report and user callbacks read them back with
:func:`parse_event` (unknown types and missing keys stay readable as plain dicts).

    >>> e = SeedEvaluated(val_score=0.5, calls=8, tokens=900, cost_usd=None)
    >>> e.to_dict()["type"], parse_event(e.to_dict()).val_score
    ('seed_evaluated', 0.5)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


@dataclass
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclass
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    method: str
    task: str
    resumed: bool
    sizes: dict[str, int]
    budget: str
    task_model: str
    optimizer_model: str


@dataclass
class SeedEvaluated(Event):
    type: ClassVar[str] = "seed_evaluated"
    val_score: float
    calls: int
    tokens: int
    cost_usd: float | None


@dataclass
class BudgetPlanned(Event):
    type: ClassVar[str] = "budget_plan"
    search: str
    reserved_for_test: str
    scope: str
    seed_tuning: str
    child_full_validation: dict[str, float] = field(default_factory=dict)


@dataclass
class BudgetWarning(Event):
    type: ClassVar[str] = "budget_warning"
    message: str


@dataclass
class ProposalMade(Event):
    """One structural proposal: ``status`` is ``valid`` or ``invalid`` (``duplicate``, with
    ``same_as``, only in runs recorded before proposals were built from new choices alone)."""

    type: ClassVar[str] = "proposal"
    parent: str
    status: str
    attempt: int
    edit: str = ""
    critique: str = ""
    error: str = ""
    same_as: str | None = None
    method: str = "flowbot"
    repaired: bool = False  # valid only after one repair turn (a provider that cannot constrain)


@dataclass
class CandidateRejected(Event):
    type: ClassVar[str] = "candidate_rejected"
    parent: str
    edit: str
    reason: str
    method: str = "flowbot"


@dataclass
class CandidateEvaluated(Event):
    """A candidate raced against the incumbent. ``val_score`` is None when racing stopped early
    (then ``race`` says on how many items, with how many wins and losses)."""

    type: ClassVar[str] = "candidate_evaluated"
    id: str
    parent: str | None
    edit: str
    val_score: float | None
    cost_per_example: float
    tokens_per_example: float
    nodes: int
    race: dict[str, Any] | None
    workflow: dict[str, Any]
    objective: float | None = None
    initial_val_score: float | None = None
    inner_steps: int = 0
    method: str = "flowbot"


@dataclass
class CandidateAccepted(Event):
    type: ClassVar[str] = "candidate_accepted"
    id: str
    val_score: float
    objective: float
    reason: str = ""
    method: str = "flowbot"


@dataclass
class InnerStep(Event):
    type: ClassVar[str] = "inner_step"
    step: int
    failing: int
    nodes_stepped: int
    val_score: float
    usage: dict[str, Any]
    candidate: str | None = None


@dataclass
class InnerCandidate(Event):
    """One instruction rewrite or demo set, judged on the minibatch and raced on validation."""

    type: ClassVar[str] = "inner_candidate"
    step: int
    node_id: str
    change: str
    old: str
    new: str
    gradient: str
    minibatch_before: float
    minibatch_after: float | None
    val_before: float
    val_after: float | None
    accepted: bool
    reason: str
    cost: dict[str, Any] = field(default_factory=dict)
    race: dict[str, Any] | None = None
    candidate: str | None = None


@dataclass
class Patience(Event):
    type: ClassVar[str] = "patience"
    loop: str
    step: int


@dataclass
class TestEvaluated(Event):
    type: ClassVar[str] = "test_evaluated"
    id: str
    score: float
    n: int


@dataclass
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    best: str
    val_score: float | None
    test_score: float | None
    stopped: str | None


EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (
    RunStarted, SeedEvaluated, BudgetPlanned, BudgetWarning, ProposalMade, CandidateRejected, CandidateEvaluated,
    CandidateAccepted, InnerStep, InnerCandidate, Patience, TestEvaluated, RunFinished)}

#: where the loops send events (the driver adds usage and logs them)
EventSink = Callable[[Event], None]


def parse_event(data: dict[str, Any]) -> Event | dict[str, Any]:
    """The typed event for a logged dict; the dict itself when its type is unknown or it does not fit."""
    cls = EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        return data
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return data
