"""The structure search both FlowBot's outer loop and the AFlow-style baseline run: one skeleton,
with the policies passed in, so the two differ only in how they expand a parent (and whether an
accepted structure is tuned), never in how candidates are judged or paid for.

Round: select a parent among the complete candidates → the expander proposes one child (an edit
that is valid by construction) → if the budget affords a full raced validation at the child's
projected price and, should the child win, its test evaluation (see
:meth:`~flowbot.optim.budgeting.BudgetPlan.race_and_test`), race it against the incumbent → a
winner becomes the incumbent and, when a tuner is given (FlowBot), is tuned by the inner loop,
whose rewrites are raced (and paid for) the same way. Stops at ``rounds``, at ``patience`` rounds
without an acceptance, or when the budget cannot pay for another candidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.lm.budget import Budget
from flowbot.optim.archive import Archive, ArchiveEntry, Objective
from flowbot.optim.budgeting import ZERO, BudgetPlan, Price, projected_price, race_price, structure_calls
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.events import (BudgetWarning, CandidateAccepted, CandidateEvaluated, CandidateRejected, EventSink,
                                  Patience)
from flowbot.optim.backward import brief_fields, clip
from flowbot.optim.policies import ParentSelection
from flowbot.optim.racing import Acceptance, RaceLedger, RaceResult
from flowbot.runtime.batch import BatchResult


@dataclass
class Proposed:
    """One child proposed from a parent: the edit as data, its one-line text, the critique that
    motivated it, and the child workflow (already checked)."""

    edit: dict[str, Any]
    text: str
    critique: str
    workflow: Workflow


@dataclass
class ProposalCounts:
    """Proposals made, valid (applied to a workflow that passes validation), invalid, duplicate
    and applied (raced as a candidate); ``repaired``: of the valid ones, those that needed a repair
    turn. ``duplicate`` (the child was already raced) stays 0 by construction: the expanders offer
    only children whose structure is not in the archive (:func:`~flowbot.optim.proposal.new_choices`),
    so an edit that would rebuild one is not on the menu and counts as invalid. The key is kept for
    the reports and results scripts that read it."""

    made: int = 0
    valid: int = 0
    invalid: int = 0
    duplicate: int = 0
    applied: int = 0
    repaired: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Expander(Protocol):
    """Proposes one child of ``parent`` among those ``fits`` accepts (the budget can pay for their
    raced validation); ``None`` when it has nothing new that fits (or the optimizer's replies were
    unusable). It counts its proposals."""

    method: str

    async def propose(self, parent: ArchiveEntry, archive: Archive, budget: Budget, counts: ProposalCounts,
                      fits: Callable[[Workflow], bool] | None = None) -> Proposed | None: ...


#: what a round returns when no candidate came of it
NOTHING = "nothing"


@dataclass
class Tuned:
    workflow: Workflow
    val: BatchResult
    steps: int
    initial_val_score: float
    blame: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    races: list[RaceResult] = field(default_factory=list)
    stopped: str | None = None


#: tune(entry, budget, label, steps) -> the tuned workflow with its (complete) validation results;
#: ``steps`` caps the inner steps (None: the inner loop's own setting)
Tuner = Callable[[ArchiveEntry, Budget, str, "int | None"], Awaitable[Tuned]]


@dataclass
class SearchResult:
    archive: Archive
    best: ArchiveEntry
    stopped: str | None
    rounds: int
    proposals: ProposalCounts
    racing: RaceLedger


@dataclass
class SearchConfig:
    rounds: int = 4  # candidates raced (proposals that come to nothing do not count)
    patience: int | None = None  # rounds without an acceptance before stopping (None: rounds only)
    #: when the tuner runs: ``tune-first`` tunes the seed before any structural step and each
    #: structure right after it wins; ``alternate`` is the paper's order — each round is one
    #: structural step followed by ``inner_steps_per_round`` inner steps on the incumbent
    schedule: str = "tune-first"
    inner_steps_per_round: int = 1
    #: when the structural rounds end with budget left (rounds done, nothing new to race, patience),
    #: the incumbent is tuned with all of it: a search that converges early would otherwise leave
    #: calls unspent (FlowBot run 2 on DROP stopped with 140 of 500 left)
    final_tuning: bool = True
    max_nodes: int = 12
    failures_shown: int = 3
    targets: list[str] = field(default_factory=list)  # the example fields that hold the correct answer


class StructureSearch:
    def __init__(self, *, evaluator_for: Callable[[Budget], Evaluator], expander: Expander,
                 selection: ParentSelection, racing: Acceptance, plan: BudgetPlan, config: SearchConfig,
                 objective: Objective | None = None, tuner: Tuner | None = None,
                 on_event: EventSink | None = None) -> None:
        self.evaluator_for = evaluator_for
        self.expander = expander
        self.selection = selection
        self.racing = racing
        self.plan = plan
        self.cfg = config
        self.objective = objective or Objective()
        self.tuner = tuner
        self.emit: EventSink = on_event or (lambda e: None)
        self.method = expander.method

    async def search(self, seed: Workflow, seed_val: BatchResult, val: list[dict[str, Any]]) -> SearchResult:
        archive, counts, ledger = Archive(), ProposalCounts(), RaceLedger()
        seed_entry = self._entry("c0", seed, seed_val, None, "seed", None)
        archive.add(seed_entry)
        archive.accept(seed_entry)
        self._announce(seed_entry, accepted_reason="the seed")
        stopped: str | None = None
        rounds = 0
        try:
            alternate = self.cfg.schedule == "alternate" and self.cfg.rounds > 0
            if self.tuner is not None and not alternate:
                await self._tune(archive, seed_entry, ledger, seed=True)
            idle = fruitless = 0
            while rounds < self.cfg.rounds:
                accepted = await self._round(archive, val, counts, ledger)
                if accepted is None:
                    stopped = "the budget left cannot pay for another candidate's raced validation"
                    self.emit(BudgetWarning(message=stopped))
                    break
                if accepted == NOTHING:  # no usable proposal from that parent: try another
                    fruitless += 1
                    if not self._parents(archive) or fruitless > 2 * len(archive.complete()):
                        stopped = "no new candidate the budget can pay for"
                        self.emit(BudgetWarning(message=stopped))
                        break
                    continue
                rounds += 1
                fruitless = 0
                if self.tuner is not None and alternate:
                    assert archive.incumbent is not None
                    await self._tune(archive, archive.incumbent, ledger, seed=False,
                                     steps=self.cfg.inner_steps_per_round)
                idle = 0 if accepted else idle + 1
                if self.cfg.patience is not None and idle >= self.cfg.patience:
                    self.emit(Patience(loop="outer", step=rounds))
                    break
            if self.tuner is not None and self.cfg.final_tuning:
                assert archive.incumbent is not None
                await self._tune(archive, archive.incumbent, ledger, seed=False, share=1.0)
        except BudgetExceeded as exc:
            stopped = str(exc)
        assert archive.incumbent is not None
        return SearchResult(archive, archive.incumbent, stopped, rounds, counts, ledger)

    # -- one round ---------------------------------------------------------------------------
    def _parents(self, archive: Archive) -> list[ArchiveEntry]:
        return [e for e in archive.complete() if not e.exhausted]

    async def _round(self, archive: Archive, val: list[dict[str, Any]], counts: ProposalCounts,
                     ledger: RaceLedger) -> bool | str | None:
        """True when a child was accepted, False when it was raced and lost, NOTHING when no child
        came of it, None when the budget cannot pay for a candidate at all."""
        parents = self._parents(archive)
        if not parents:
            return NOTHING
        parent = self.selection.select(parents, self.objective)
        parent_price = Price.of(parent.val) if parent.val is not None else Price(1.0, 0.0, 0.0)
        # the cheapest child to race re-runs one call per item: the cache answers the parent's others
        if not self.plan.affords_candidate(parent_price, raced_at=parent_price.times(1 / structure_calls(parent.workflow))):
            return None
        parent.expansions += 1

        def fits(child: Workflow) -> bool:  # only children the budget can race and, should they win, test
            return self.plan.affords_candidate(projected_price(parent.workflow, parent_price, child),
                                               raced_at=race_price(parent.workflow, parent_price, child))

        invalid_before = counts.invalid
        proposed = await self.expander.propose(parent, archive, self.plan.for_proposal(f"proposal from {parent.id}"),
                                               counts, fits)
        if proposed is None:
            # nothing new that fits from this parent (budgets only shrink, so never again), unless
            # the optimizer merely failed to answer usably this time
            parent.exhausted = counts.invalid == invalid_before
            return NOTHING
        price = projected_price(parent.workflow, parent_price, proposed.workflow)
        raced_at = race_price(parent.workflow, parent_price, proposed.workflow)
        entry_id = f"c{len(archive.entries)}"
        if not self.plan.affords_candidate(price, overhead=ZERO, raced_at=raced_at):  # the proposal is paid by now
            self._reject(parent, proposed, f"its raced validation (≈{raced_at.times(self.plan.n_val).describe()}) "
                                           "and, should it win, its test evaluation do not fit in the budget left")
            return False
        budget = self.plan.for_child(f"candidate {entry_id}", price, raced_at)
        incumbent = archive.incumbent
        assert incumbent is not None and incumbent.val is not None
        try:
            result = await self.racing.race(self.evaluator_for(budget), proposed.workflow, incumbent.val, val,
                                            f"[{entry_id}] racing {proposed.text}")
        except BudgetExceeded as exc:
            if self.plan.budget.exhausted:
                raise
            self._reject(parent, proposed, f"not scored within its budget ({exc})")
            return False
        self.plan.check_winner(result)  # it may have cost more than projected
        counts.applied += 1
        ledger.record(entry_id, result)
        entry = self._entry(entry_id, proposed.workflow, result.batch, parent, proposed.text, proposed.edit,
                            result)
        archive.add(entry)
        parent.tried.append((proposed.text, entry.val_score if entry.complete else None))
        if not result.accepted:
            self._announce(entry)
            return False
        archive.accept(entry)
        self._announce(entry, accepted_reason=result.reason)
        self.plan.reserve_test(Price.of(result.batch), best_is_seed=False)
        if self.tuner is not None and self.cfg.schedule != "alternate":
            await self._tune(archive, entry, ledger, seed=False)
        return True

    async def _tune(self, archive: Archive, entry: ArchiveEntry, ledger: RaceLedger, seed: bool,
                    steps: int | None = None, share: float | None = None) -> None:
        assert self.tuner is not None
        budget = self.plan.for_tuning(f"tuning {entry.id}", seed=seed, share=share)
        tuned = await self.tuner(entry, budget, f"[{entry.id}] ", steps)
        for i, r in enumerate(tuned.races):
            ledger.record(f"{entry.id} rewrite {i + 1}", r)
        entry.blame, entry.failures = dict(tuned.blame), tuned.failures[-self.cfg.failures_shown:]
        if tuned.steps:
            if entry.initial_val_score is None:
                entry.initial_val_score = entry.val_score
            entry.inner_steps += tuned.steps
        if tuned.workflow is not entry.workflow:
            entry.workflow, entry.val = tuned.workflow, tuned.val
            entry.val_score = tuned.val.score
            entry.cost_per_example = tuned.val.cost_per_example()
            entry.tokens_per_example = tuned.val.tokens_per_example()
            self._announce(entry, accepted_reason="tuned by the inner loop")
            self.plan.reserve_test(Price.of(tuned.val), best_is_seed=False)

    # -- records ---------------------------------------------------------------------------
    def _entry(self, entry_id: str, workflow: Workflow, val: BatchResult, parent: ArchiveEntry | None, text: str,
               edit: dict[str, Any] | None, result: RaceResult | None = None) -> ArchiveEntry:
        failures = [f"inputs {brief_fields({k: r.example.get(k) for k in workflow.sketch.inputs})} | output "
                    f"{clip(r.prediction, 160)}"
                    + (f" | correct {brief_fields({k: r.example.get(k) for k in self.cfg.targets}, 120)}"
                       if self.cfg.targets else "")
                    + f" | score {r.score:.2f}" for r in val.results if r.score < 1.0]
        return ArchiveEntry(
            id=entry_id, workflow=workflow, val_score=val.score, cost_per_example=val.cost_per_example(),
            tokens_per_example=val.tokens_per_example(), parent=parent.id if parent else None, edit=edit,
            edit_text=text, failures=failures[: self.cfg.failures_shown],
            complete=result is None or result.complete, race=result.to_dict() if result else None, val=val)

    def _announce(self, entry: ArchiveEntry, accepted_reason: str | None = None) -> None:
        self.emit(CandidateEvaluated(
            id=entry.id, parent=entry.parent, edit=entry.edit_text,
            val_score=entry.val_score if entry.complete else None, cost_per_example=entry.cost_per_example,
            tokens_per_example=entry.tokens_per_example, nodes=len(entry.workflow.sketch.nodes), race=entry.race,
            workflow=json.loads(entry.workflow.model_dump_json()),
            objective=self.objective(entry) if entry.complete else None,
            initial_val_score=entry.initial_val_score, inner_steps=entry.inner_steps, method=self.method))
        if accepted_reason is not None:
            self.emit(CandidateAccepted(id=entry.id, val_score=entry.val_score, objective=self.objective(entry),
                                        reason=accepted_reason, method=self.method))

    def _reject(self, parent: ArchiveEntry, proposed: Proposed, reason: str) -> None:
        parent.tried.append((f"{proposed.text} ({reason})", None))
        self.emit(CandidateRejected(parent=parent.id, edit=proposed.text, reason=reason, method=self.method))

