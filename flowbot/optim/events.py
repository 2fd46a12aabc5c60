"""The run's events, typed. The loops emit these objects; the run directory logs them as JSON lines
(``{"type": ..., ...}``, with the log's own ``seq``, ``time`` and ``usage_total``); the progress
display, the report, the MLflow adapter and typed user callbacks read every line back with
:func:`read_event`, which never fails: a type this version does not know becomes an
:class:`UnknownEvent`, a field an older version did not write takes its default (None when it has
none), and types and fields only older versions wrote are declared here too (left out of what this
version logs), so a reader only ever reads declared fields. :func:`parse_event` is the strict inverse of ``to_dict``.

    >>> e = SeedEvaluated(val_score=0.5, calls=8, tokens=900, cost_usd=None)
    >>> e.to_dict()["type"], parse_event(e.to_dict()).val_score
    ('seed_evaluated', 0.5)
    >>> rec = read_event({"seq": 3, "type": "candidate_rejected", "parent": "c0", "error": "no such node"})
    >>> rec.seq, rec.event.parent, rec.event.edit, rec.event.error, rec.has("edit")
    (3, 'c0', None, 'no such node', False)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generic, Iterable, Mapping, TypeVar

#: metadata of a field left out of ``to_dict`` while it holds its default, so that what is logged
#: without it does not change: a field only older versions wrote (read back from their logs), or one
#: only some emitters of an event set
WHEN_SET = {"when_set": True}


def _when_set(default: Any = None) -> Any:
    return field(default=default, metadata=WHEN_SET)


@dataclass
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                      if not (f.metadata.get("when_set") and getattr(self, f.name) == f.default)}}


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
class OutputWarning(Event):
    """The seed's outputs look like no answer at all (one output, scored 0 each time, on most items)."""

    type: ClassVar[str] = "output_warning"
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
    # written before proposals were built from new choices alone: an invalid proposal's error after
    # its repair turn (and before it), and the candidate a duplicate had the structure of
    error: str | None = _when_set()
    first_error: str | None = _when_set()
    same_as: str | None = _when_set()


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
    # written before racing: blame counts per node, and why the candidate's inner loop stopped
    blame: dict[str, int] | None = _when_set()
    inner_stopped: str | None = _when_set()


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
    #: the workflow the inner loop was tuning (the driver sets it, as on every inner-loop event)
    candidate: str | None = _when_set()


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


# -- types only older versions wrote (read back, never emitted) ---------------------------------
@dataclass
class CandidateProposed(Event):
    """Legacy: a valid structural proposal, before :class:`ProposalMade`."""

    type: ClassVar[str] = "candidate_proposed"
    parent: str
    edit: str
    rationale: str = ""
    attempt: int = 0
    method: str = "flowbot"


@dataclass
class EditRepaired(Event):
    """Legacy: an invalid proposal that its repair turn made valid (``error``: the first one)."""

    type: ClassVar[str] = "edit_repaired"
    parent: str
    error: str


@dataclass
class InnerPatience(Event):
    """Legacy: the inner loop stopped for lack of progress, before :class:`Patience`."""

    type: ClassVar[str] = "inner_patience"
    step: int
    patience: int


@dataclass
class OuterPatience(Event):
    """Legacy: the outer loop stopped for lack of progress, before :class:`Patience`."""

    type: ClassVar[str] = "outer_patience"
    round: int


@dataclass
class UnknownEvent(Event):
    """A logged line whose type this version does not know (a newer FlowBot's, or no type at all):
    ``name`` is its type as logged, ``data`` its other keys."""

    type: ClassVar[str] = "unknown"
    name: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return ({"type": self.name} if self.name is not None else {}) | self.data


#: what this version emits, by logged type
EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (
    RunStarted, SeedEvaluated, BudgetPlanned, BudgetWarning, OutputWarning, ProposalMade, CandidateRejected,
    CandidateEvaluated, CandidateAccepted, InnerStep, InnerCandidate, Patience, TestEvaluated, RunFinished)}
#: what only older versions wrote
LEGACY_EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (
    CandidateProposed, EditRepaired, InnerPatience, OuterPatience)}
#: what :func:`read_event` reads into a class of its own
READABLE_TYPES: dict[str, type[Event]] = EVENT_TYPES | LEGACY_EVENT_TYPES

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


# -- reading a log back -------------------------------------------------------------------------
EventT = TypeVar("EventT", bound=Event)
#: keys the run directory's log (and the callbacks' replay flag) adds to every event
ENVELOPE = ("seq", "time", "usage_total", "replayed")


@dataclass
class LoggedEvent(Generic[EventT]):
    """One line of a run's ``events.jsonl`` (or one callback dict), read back: the typed ``event``
    and what the log adds to it (``seq``, ``time``, the cumulative meter snapshot ``usage_total``,
    and ``replayed`` for events a resumed run replayed from its log), each as logged (None when
    absent). ``present`` names the event's fields the line had: an older version wrote fewer, and
    those the line lacked hold their defaults (None when they have none). ``extra`` keeps keys no
    class declares (a newer version's)."""

    event: EventT
    seq: Any = None
    time: Any = None
    usage_total: Any = None
    replayed: bool = False
    present: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str | None:
        """The type as logged."""
        return self.event.name if isinstance(self.event, UnknownEvent) else self.event.type

    def has(self, name: str) -> bool:
        """The line carried the event's field ``name``."""
        return name in self.present

    def to_dict(self) -> dict[str, Any]:
        """The line as it was logged (the dict a callback receives)."""
        if isinstance(self.event, UnknownEvent):
            body = self.event.to_dict()
        else:
            body = {"type": self.event.type} | {f.name: getattr(self.event, f.name)
                                                for f in dataclasses.fields(self.event) if f.name in self.present}
        envelope = {k: getattr(self, k) for k in ENVELOPE if getattr(self, k) not in (None, False)}
        return {**({"seq": envelope.pop("seq")} if "seq" in envelope else {}), **body, **self.extra, **envelope}


def read_event(data: Mapping[str, Any] | LoggedEvent) -> LoggedEvent:
    """A logged event (a dict with a ``type``), typed; never fails. See :class:`LoggedEvent`."""
    if isinstance(data, LoggedEvent):
        return data
    envelope = {k: data.get(k) for k in ENVELOPE}
    envelope["replayed"] = bool(envelope["replayed"])
    cls = READABLE_TYPES.get(data.get("type")) if isinstance(data.get("type"), str) else None
    if cls is None:
        name = data.get("type") if isinstance(data.get("type"), str) else None
        rest = {k: v for k, v in data.items() if k not in ENVELOPE and not (k == "type" and name is not None)}
        return LoggedEvent(UnknownEvent(name=name, data=rest), **envelope)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = data[f.name]
        elif f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs[f.name] = f.default_factory()
        else:
            kwargs[f.name] = None
    names = set(kwargs)
    extra = {k: v for k, v in data.items() if k not in names and k not in ENVELOPE and k != "type"}
    return LoggedEvent(cls(**kwargs), present=frozenset(n for n in names if n in data), extra=extra, **envelope)


def first_event(records: Iterable[LoggedEvent], cls: type[EventT]) -> EventT | None:
    """The first event of class ``cls`` among the read-back ``records`` (None when there is none)."""
    return next((r.event for r in records if isinstance(r.event, cls)), None)


def typed_callback(fn: Callable[[LoggedEvent], Any]) -> Callable[[dict[str, Any]], None]:
    """A callback for ``flowbot.optimize(..., callbacks=[...])``, which passes each event as a dict,
    that gives ``fn`` the typed event instead (a :class:`LoggedEvent`, as :func:`read_event` makes it).

    >>> seen = []
    >>> cb = typed_callback(lambda rec: seen.append((rec.seq, rec.event)))
    >>> cb({"seq": 2, "type": "budget_warning", "message": "low", "replayed": False})
    >>> seen
    [(2, BudgetWarning(message='low'))]
    """
    def callback(event: dict[str, Any]) -> None:
        fn(read_event(event))

    callback.__wrapped__ = fn  # type: ignore[attr-defined]
    return callback
