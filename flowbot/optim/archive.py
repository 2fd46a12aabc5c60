"""The archive of candidates, the objective (score, or score with a cost penalty), and the Pareto
front of score against cost per example.

Every candidate that was raced is archived (so no proposal schema offers it again), but only
the ones scored on the whole validation set are *complete*: they alone can be parents, be on the
front or be chosen. The *incumbent* is the last accepted candidate: each acceptance is a paired race
won against the one before, so the incumbent is the best, by the same rule that picks the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, TypeVar

from flowbot.graph.sketch import Workflow
from flowbot.optim import defaults as D
from flowbot.runtime.batch import BatchResult

T = TypeVar("T")


@dataclass
class ArchiveEntry:
    id: str
    workflow: Workflow
    val_score: float
    cost_per_example: float  # nominal dollars per example (0 when prices are unknown)
    tokens_per_example: float
    parent: str | None = None
    edit: dict[str, Any] | None = None
    edit_text: str = "seed"
    blame: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    expansions: int = 0
    tried: list[tuple[str, float | None]] = field(default_factory=list)  # edits proposed from here
    inner_steps: int = 0
    initial_val_score: float | None = None  # before the inner loop tuned it
    complete: bool = True  # scored on every validation item (racing stops hopeless ones early)
    accepted: bool = False
    race: dict[str, Any] | None = None  # how it fared against the incumbent (see optim.racing)
    exhausted: bool = False  # no new child of it fits in the budget: not a parent any more
    val: BatchResult | None = field(default=None, repr=False)  # per-item results, for racing

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "edit": self.edit_text,
            "val_score": self.val_score,
            "cost_per_example": self.cost_per_example,
            "tokens_per_example": self.tokens_per_example,
            "nodes": len(self.workflow.sketch.nodes),
            "initial_val_score": self.initial_val_score,
            "inner_steps": self.inner_steps,
            "complete": self.complete,
            "accepted": self.accepted,
            "race": self.race,
        }


@dataclass
class Objective:
    """``score``: validation score alone. ``cost``: score − weight × cost per example, where cost is
    dollars when prices are known and thousands of tokens otherwise (local models cost $0)."""

    kind: Literal["score", "cost"] = D.OBJECTIVE
    cost_weight: float = D.COST_WEIGHT

    def cost_of(self, e: ArchiveEntry) -> float:
        return e.cost_per_example if e.cost_per_example > 0 else e.tokens_per_example / 1000.0

    def __call__(self, e: ArchiveEntry) -> float:
        if self.kind == "score":
            return e.val_score
        return e.val_score - self.cost_weight * self.cost_of(e)


class Archive:
    def __init__(self) -> None:
        self.entries: list[ArchiveEntry] = []
        self.signatures: dict[str, str] = {}  # sketch signature -> entry id
        self.incumbent: ArchiveEntry | None = None

    def add(self, entry: ArchiveEntry) -> None:
        self.entries.append(entry)
        self.signatures.setdefault(entry.workflow.sketch.signature(), entry.id)

    def accept(self, entry: ArchiveEntry) -> None:
        """``entry`` won its race against the incumbent (or is the seed): it is the incumbent now."""
        entry.accepted = True
        self.incumbent = entry

    def complete(self) -> list[ArchiveEntry]:
        return [e for e in self.entries if e.complete]

    def seen(self, workflow: Workflow) -> str | None:
        return self.signatures.get(workflow.sketch.signature())

    def get(self, entry_id: str) -> ArchiveEntry:
        return next(e for e in self.entries if e.id == entry_id)

    def best(self, objective: Objective) -> ArchiveEntry:
        """The incumbent when the search raced its candidates; else the best complete entry
        (ties go to the cheaper, then the earlier one)."""
        if self.incumbent is not None:
            return self.incumbent
        pool = self.complete() or self.entries
        return max(pool, key=lambda e: (objective(e), -objective.cost_of(e), -self.entries.index(e)))

    def pareto_front(self, objective: Objective | None = None) -> list[ArchiveEntry]:
        """Entries no other entry beats on both score (higher) and cost (lower), cheapest first."""
        obj = objective or Objective()
        front = non_dominated((e, e.val_score, obj.cost_of(e)) for e in self.complete())
        return sorted(front, key=lambda e: (obj.cost_of(e), -e.val_score))


def non_dominated(points: Iterable[tuple[T, float, float]]) -> list[T]:
    """The items of ``(item, score, cost)`` points that no other point beats on both score (higher)
    and cost (lower), in their order (the optimizer's Pareto front and the report's).

    >>> non_dominated([("a", 0.5, 1.0), ("b", 0.6, 2.0), ("c", 0.4, 1.5), ("d", 0.6, 2.0)])
    ['a', 'b', 'd']
    """
    pts = list(points)
    return [item for item, score, cost in pts
            if not any(s >= score and c <= cost and (s > score or c < cost) for _, s, c in pts)]
