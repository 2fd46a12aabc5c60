"""Paired, sequential acceptance ("racing"): a candidate is scored on the incumbent's items, one
chunk at a time, and dropped as soon as it can no longer reach the acceptance rule.

The incumbent's per-item results are known. Only an item the incumbent got less than full marks on
can become a *win*, so those items are raced first (each group in a seeded order); once they are
done, the rest can only add losses. Evaluation stops when even winning every remaining possible
item would not pass the rule — the score decision is then the one a full evaluation would have
made, for fewer calls. A candidate is accepted on a margin (wins − losses ≥ ``margin`` and an exact
one-sided sign test at level ``alpha``), never on a tie unless it is clearly cheaper *on the items
raced*: the cost of items not raced is unknown, and waiting to learn it would make every race of a
same-priced loser run to ~80% of the items (measured: 604 instead of 273 of 800 items scored), so
a stopped race judges a tie's cost on the items it raced (the incumbent's misses first), not on all. The inner
loop, FlowBot's outer loop and the AFlow-style search all decide through the :class:`Acceptance`
protocol (one method, ``race``): a run gives them one policy object — :class:`PairedRacing` unless
another is passed in — so the comparison between them stays fair.

    >>> rule = PairedRacing(margin=2, alpha=0.15)
    >>> rule.passes(3, 0), rule.passes(2, 0), rule.passes(4, 3)
    (True, False, False)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowbot.graph.sketch import Workflow
from flowbot.optim.evaluation import assemble, with_ids
from flowbot.optim.stats import EPS, count_pairs, p_value_sign
from flowbot.runtime.batch import BatchResult, ExampleResult


class Acceptance(Protocol):
    """What the loops (the inner loop, FlowBot's outer loop, the AFlow-style search) need from an
    acceptance policy, and all they call: judge ``candidate`` against the incumbent on the items the
    incumbent was scored on (``incumbent`` holds its per-item results), scoring the candidate with
    ``evaluate`` (an :class:`~flowbot.optim.evaluation.Evaluator`) on as many of them as the policy
    needs. The result's ``batch`` holds the candidate's results on the items it was scored on; only
    a complete one (every item) can be accepted. :class:`PairedRacing` is FlowBot's policy."""

    async def race(self, evaluate: Any, candidate: Workflow, incumbent: BatchResult,
                   examples: list[dict[str, Any]], description: str = "racing") -> "RaceResult": ...


@dataclass
class RaceResult:
    accepted: bool
    reason: str
    wins: int
    losses: int
    ties: int
    evaluated: int
    total: int
    p_value: float
    batch: BatchResult  # the candidate's results on the items it was scored on
    calls_saved: float = 0.0  # calls a full evaluation would have spent on the skipped items
    cheaper: bool = False

    @property
    def stopped_early(self) -> bool:
        return self.evaluated < self.total

    @property
    def complete(self) -> bool:
        return not self.stopped_early

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason, "wins": self.wins, "losses": self.losses,
                "ties": self.ties, "evaluated": self.evaluated, "total": self.total,
                "p_value": round(self.p_value, 6), "stopped_early": self.stopped_early,
                "calls_saved": round(self.calls_saved, 2), "cheaper": self.cheaper}


@dataclass
class PairedRacing:
    """Accept a candidate against the incumbent on a margin and an exact sign test.

    ``margin``: wins − losses needed; ``alpha``: one-sided sign-test level; ``cheaper_by``: a
    candidate that is not worse (wins ≥ losses) is accepted when it costs at least this fraction
    less than the incumbent on the items raced (tokens, or dollars when priced; None: never);
    ``chunk``: items scored between checks (default: the evaluator's concurrency); ``seed``: the
    racing order."""

    margin: int = 2
    alpha: float = 0.15
    cheaper_by: float | None = 0.2
    chunk: int | None = None
    seed: int = 0
    full_score: float = 1.0

    def passes(self, wins: int, losses: int) -> bool:
        return wins - losses >= self.margin and p_value_sign(wins, losses) <= self.alpha + 1e-12

    def decide(self, wins: int, losses: int, cheaper: bool) -> tuple[bool, str]:
        p = p_value_sign(wins, losses)
        if self.passes(wins, losses):
            return True, f"{wins} wins, {losses} losses (sign test p={p:.3f})"
        if cheaper and wins >= losses:
            return True, f"as good ({wins} wins, {losses} losses) and cheaper"
        if wins - losses < self.margin:
            return False, f"{wins} wins, {losses} losses: below the margin of {self.margin}"
        return False, f"{wins} wins, {losses} losses: not significant (p={p:.3f} > {self.alpha:g})"

    def can_still_accept(self, wins: int, losses: int, possible_wins_left: int, cheaper: bool) -> bool:
        best = wins + possible_wins_left
        return self.passes(best, losses) or (cheaper and best >= losses)

    async def race(self, evaluate: Any, candidate: Workflow, incumbent: BatchResult,
                   examples: list[dict[str, Any]], description: str = "racing") -> "RaceResult":
        """The :class:`Acceptance` protocol: see :func:`race`."""
        return await race(evaluate, candidate, incumbent, examples, self, description)

    def order(self, incumbent: BatchResult, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items the incumbent did not get full marks on first, each group in a seeded order."""
        scores = incumbent.scores()
        rng = random.Random(self.seed)
        open_, solved = [], []
        for ex in examples:
            (solved if scores.get(str(ex["id"]), 0.0) >= self.full_score - EPS else open_).append(ex)
        rng.shuffle(open_)
        rng.shuffle(solved)
        return open_ + solved


@dataclass
class RaceLedger:
    """What racing did over a run: candidates raced, stopped early, calls spent and saved."""

    raced: int = 0
    stopped_early: int = 0
    accepted: int = 0
    calls_spent: float = 0.0
    calls_saved: float = 0.0
    by_candidate: list[dict[str, Any]] = field(default_factory=list)

    def record(self, label: str, race: RaceResult) -> None:
        self.raced += 1
        self.stopped_early += int(race.stopped_early)
        self.accepted += int(race.accepted)
        self.calls_spent += race.batch.calls
        self.calls_saved += race.calls_saved
        self.by_candidate.append({"candidate": label, **race.to_dict(), "calls": race.batch.calls})

    def to_dict(self) -> dict[str, Any]:
        full = self.calls_spent + self.calls_saved
        return {"raced": self.raced, "stopped_early": self.stopped_early, "accepted": self.accepted,
                "calls_spent": round(self.calls_spent, 1), "calls_full_evaluation": round(full, 1),
                "calls_saved": round(self.calls_saved, 1),
                "saved_fraction": round(self.calls_saved / full, 3) if full else 0.0}


def _cost(results: list[ExampleResult], priced: bool) -> float:
    if priced:
        return sum((r.trace.usage.cost_usd or 0.0) for r in results if r.trace is not None)
    return float(sum(r.trace.usage.total_tokens for r in results if r.trace is not None))


def is_cheaper(candidate: list[ExampleResult], incumbent: BatchResult, cheaper_by: float) -> bool:
    """Whether the candidate costs ``cheaper_by`` less than the incumbent on the same items."""
    ids = {r.example_id for r in candidate}
    inc = [r for r in incumbent.results if r.example_id in ids]
    priced = any((r.trace.usage.cost_usd or 0.0) > 0 for r in inc if r.trace is not None)
    inc_cost = _cost(inc, priced)
    return inc_cost > 0 and _cost(candidate, priced) <= (1 - cheaper_by) * inc_cost


async def race(evaluate: Any, candidate: Workflow, incumbent: BatchResult, examples: list[dict[str, Any]],
               rule: PairedRacing, description: str = "racing") -> RaceResult:
    """Score ``candidate`` on ``examples`` (which the incumbent was scored on) in the rule's order,
    stopping as soon as it cannot be accepted any more. ``evaluate`` is an
    :class:`~flowbot.optim.evaluation.Evaluator` (``await evaluate(workflow, items, description)``)."""
    inc_scores = incumbent.scores()
    ordered = rule.order(incumbent, with_ids(examples))
    chunk = max(1, rule.chunk or getattr(evaluate, "concurrency", 1))
    done: list[ExampleResult] = []
    cheaper = False
    wins = losses = ties = 0
    for start in range(0, len(ordered), chunk):
        part = await evaluate(candidate, ordered[start:start + chunk], description)
        done.extend(part.results)
        wins, losses, ties = count_pairs({r.example_id: r.score for r in done}, inc_scores)
        cheaper = rule.cheaper_by is not None and is_cheaper(done, incumbent, rule.cheaper_by)
        rest = ordered[start + chunk:]
        possible = sum(1 for ex in rest if inc_scores.get(str(ex["id"]), 0.0) < rule.full_score - EPS)
        if rest and not rule.can_still_accept(wins, losses, possible, cheaper):
            break
    accepted, reason = rule.decide(wins, losses, cheaper)
    if len(done) < len(ordered):
        accepted = False
        reason = f"stopped after {len(done)} of {len(ordered)} items: {reason}"
    batch = assemble(done, len(ordered))
    per_example = batch.calls / len(done) if done else 0.0
    return RaceResult(accepted, reason, wins, losses, ties, len(done), len(ordered), p_value_sign(wins, losses),
                      batch, calls_saved=per_example * (len(ordered) - len(done)), cheaper=cheaper)
