"""Budgets priced in evaluations: what one candidate costs, what the test split will cost, and
what the search may spend.

A workflow's *price* is what one example costs it (calls, tokens, dollars), measured on validation
or, for a new structure, projected from its parent's measured price and the number of LM calls
each structure makes per example. A child gets a budget for one full raced validation at its
price; the test evaluation is reserved exactly from the price of the workflow that will be tested
(and only for the test items whose answers are not already cached); the seed's own tuning and each
accepted structure's tuning are capped at a share of what is left.

A candidate may win, and the winner is what the test evaluation pays for: so a candidate (a
structural child or an inner-loop rewrite) is raced only when the headroom holds both its raced
validation and the growth of the test reserve to its own test evaluation
(:meth:`BudgetPlan.race_and_test`). Whatever wins, the test reserve stays paid for.

    >>> p = Price(calls=1.0, tokens=500.0, usd=0.0)
    >>> p.times(50).calls
    50.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode
from flowbot.graph.sketch import Workflow
from flowbot.lm.budget import Budget
from flowbot.runtime.batch import BatchResult
from flowbot.runtime.prompts import shown_field

if TYPE_CHECKING:
    from flowbot.optim.racing import RaceResult

Scope = Literal["all", "search"]


@dataclass(frozen=True)
class Price:
    """Cost of one example (or, after :meth:`times`, of several)."""

    calls: float
    tokens: float
    usd: float

    @classmethod
    def of(cls, batch: BatchResult) -> "Price":
        n = max(1, len(batch.results))
        return cls(batch.calls / n, batch.usage.total_tokens / n, (batch.usage.cost_usd or 0.0) / n)

    def times(self, factor: float) -> "Price":
        return Price(self.calls * factor, self.tokens * factor, self.usd * factor)

    def plus(self, other: "Price") -> "Price":
        return Price(self.calls + other.calls, self.tokens + other.tokens, self.usd + other.usd)

    def at_least(self, other: "Price") -> "Price":
        """The larger of the two on each dimension."""
        return Price(max(self.calls, other.calls), max(self.tokens, other.tokens), max(self.usd, other.usd))

    def describe(self) -> str:
        text = f"{self.calls:.0f} calls, {self.tokens:,.0f} tokens"
        return text + (f", ${self.usd:.4f}" if self.usd else "")


ZERO = Price(0.0, 0.0, 0.0)
#: tokens an optimizer call is priced at before any is measured (a proposal, a loss, a rewrite)
OPTIMIZER_CALL_TOKENS = 1500.0


def node_calls(workflow: Workflow, node: Any) -> float:
    """LM calls one example makes at most in ``node`` (see :func:`structure_calls`)."""
    if isinstance(node, LLMNode):
        return 2.0 if workflow.params[node.id].tools else 1.0
    llm_branch = isinstance(node, BranchNode) and node.mode == "llm"
    return 1.0 if llm_branch or (isinstance(node, MergeNode) and node.strategy == "select") else 0.0


def structure_calls(workflow: Workflow) -> float:
    """LM calls one example makes at most (a tool-using llm node counts two: act, then answer)."""
    return max(sum(node_calls(workflow, n) for n in workflow.sketch.nodes), 1.0)


def projected_price(parent: Workflow, parent_price: Price, child: Workflow) -> Price:
    """The child's price from its parent's measured one, scaled by their calls per example."""
    return parent_price.times(structure_calls(child) / structure_calls(parent))


def _as_run(node: Any) -> dict[str, Any]:
    """What decides a node's requests besides its parameters: not its id, purpose or the name of
    the field it writes, only the name its prompt shows for it (``output.prompt_field`` or that field)."""
    d = node.model_dump(exclude={"id", "purpose", "writes"})
    if isinstance(node, LLMNode):
        d["output"].pop("prompt_field", None)
        d["shown"] = shown_field(node)
    return d


def cached_nodes(parent: Workflow, child: Workflow) -> set[str]:
    """The nodes of ``child`` whose requests are exactly the ``parent``'s on every example, so the
    response cache answers them once the parent was evaluated on the same items: the same node and
    parameters (its id, purpose and output name aside), reading only the workflow's inputs and
    other such nodes.

        >>> from flowbot.tasks.seeds import build_baseline
        >>> from flowbot.optim.operators import OperatorContext, apply_operator
        >>> cot = build_baseline("cot", inputs=["passage", "question"], output="answer", extract="answer")
        >>> sorted(cached_nodes(cot, apply_operator(cot, "format_answer", "solve", OperatorContext(tools={}))))
        ['solve']
    """
    before = {n.id: n for n in parent.sketch.nodes}
    cached: set[str] = set()
    for node in child.sketch.topological_order():
        old = before.get(node.id)
        if old is None or _as_run(old) != _as_run(node) or parent.params[node.id] != child.params[node.id]:
            continue
        producers = (child.sketch.writer_of(f) for f in node.reads)
        if all(w is None or w.id in cached for w in producers):
            cached.add(node.id)
    return cached


def race_price(parent: Workflow, parent_price: Price, child: Workflow) -> Price:
    """What racing ``child`` on items ``parent`` was evaluated on costs per example: only the calls
    of the nodes the cache cannot answer (see :func:`cached_nodes`). A format step added after a
    chain of thought pays one call per item, not two; a rewrite of the last node, only that node."""
    cached = cached_nodes(parent, child)
    fresh = sum(node_calls(child, n) for n in child.sketch.nodes if n.id not in cached)
    return parent_price.times(fresh / structure_calls(parent))


class BudgetPlan:
    """How one run's budget is divided. ``scope="search"`` caps the search only (the test split is
    evaluated outside the cap and reported apart); ``"all"`` caps everything and reserves the test."""

    def __init__(self, budget: Budget, *, n_val: int, n_test: int, scope: Scope = "all",
                 seed_tuning_share: float = 0.4, tuning_share: float = 0.5, slack: float = 1.25,
                 proposal_calls: int = 2) -> None:
        self.budget = budget
        self.n_val, self.n_test = n_val, n_test
        self.scope = scope
        self.seed_tuning_share, self.tuning_share = seed_tuning_share, tuning_share
        self.slack = slack
        self.proposal = Price(float(proposal_calls), OPTIMIZER_CALL_TOKENS * proposal_calls, 0.0)
        self._reserve = ZERO
        self.seed_price = ZERO
        self.seed_uncached = 0  # test items whose seed answers are not in the cache
        self.compare_seed = True

    # -- the test reserve -------------------------------------------------------------------
    def set_seed(self, price: Price, uncached_test_items: int, compare_seed: bool = True) -> Price:
        """What the seed costs per example and how many of its test answers must still be paid;
        reserves the test as if the seed were the result."""
        self.seed_price, self.seed_uncached, self.compare_seed = price, uncached_test_items, compare_seed
        return self.reserve_test(price, best_is_seed=True)

    def reserve_test(self, best: Price, best_is_seed: bool) -> Price:
        """Reserve exactly what the final test evaluation will cost with ``best`` as the chosen
        workflow (see :meth:`test_cost`)."""
        self._reserve = self.test_cost(best, best_is_seed)
        return self._reserve

    def test_cost(self, best: Price, best_is_seed: bool) -> Price:
        """What the final test evaluation costs with ``best`` as the chosen workflow: its items
        (only the seed's uncached ones when the seed is the result) plus the seed's uncached items
        when the seed is scored beside it for comparison."""
        if self.scope == "search" or self.n_test == 0:
            return ZERO
        seed_part = self.seed_price.times(self.seed_uncached) if (self.compare_seed or best_is_seed) else ZERO
        best_part = ZERO if best_is_seed else best.times(self.n_test)
        return seed_part.plus(best_part)

    def reserve_growth(self, price: Price) -> Price:
        """How much the test reserve grows if a candidate at ``price`` becomes the result. Never
        negative on any dimension: until the candidate wins, the current reserve stands."""
        new, now = self.test_cost(price, best_is_seed=False), self._reserve
        return Price(max(0.0, new.calls - now.calls), max(0.0, new.tokens - now.tokens), max(0.0, new.usd - now.usd))

    @property
    def reserved(self) -> Price:
        return self._reserve

    # -- headroom ---------------------------------------------------------------------------
    def headroom(self) -> dict[str, float]:
        """What the search may still spend on each capped dimension (calls, tokens, usd)."""
        lim, spent = self.budget.limits, self.budget.spent
        room: dict[str, float] = {}
        if lim.max_calls is not None:
            room["calls"] = lim.max_calls - spent.calls - self.budget._in_flight - self._reserve.calls
        if lim.max_tokens is not None:
            room["tokens"] = lim.max_tokens - spent.tokens - self._reserve.tokens
        if lim.max_usd is not None:
            room["usd"] = lim.max_usd - spent.usd - self._reserve.usd
        return room

    def affords(self, cost: Price) -> bool:
        """Whether ``cost`` (e.g. one full validation of a child) fits in the headroom."""
        need = {"calls": cost.calls, "tokens": cost.tokens, "usd": cost.usd}
        return all(room >= need[k] - 1e-9 for k, room in self.headroom().items())

    def full_validation(self, price: Price, overhead: Price | None = None) -> Price:
        """One full raced validation at ``price``, plus ``overhead`` (default: the structural proposal)."""
        return price.times(self.n_val).plus(self.proposal if overhead is None else overhead)

    def race_and_test(self, price: Price, overhead: Price | None = None, raced_at: Price | None = None) -> Price:
        """What the headroom must hold to race a candidate at ``price`` and, should it win, test it:
        its full validation (plus ``overhead``, see :meth:`full_validation`) and the growth of the
        test reserve to its own test evaluation. Checking the validation alone would let a winner
        push the reserve past the budget, leaving the final test evaluation unpaid. ``raced_at``:
        what its race pays per item when the cache answers part of it (see :func:`race_price`)."""
        return self.full_validation(raced_at or price, overhead).plus(self.reserve_growth(price))

    def affords_candidate(self, price: Price, overhead: Price | None = None, raced_at: Price | None = None) -> bool:
        """Whether a candidate at ``price`` may be raced (see :meth:`race_and_test`)."""
        return self.affords(self.race_and_test(price, overhead, raced_at))

    def affords_win(self, measured: Price) -> bool:
        """Whether, after its race, a winner measured at ``measured`` can still be tested: its
        price may come out above the projection its race was allowed on."""
        return self.affords(self.reserve_growth(measured))

    def check_winner(self, race: "RaceResult") -> None:
        """A race winner that, as the result, could not be tested (see :meth:`affords_win`) is
        recorded as not accepted."""
        if race.accepted and not self.affords_win(Price.of(race.batch)):
            race.accepted = False
            race.reason = f"won ({race.reason}), but its test evaluation does not fit in the budget left"

    def _capped(self, name: str, cap: dict[str, float]) -> Budget:
        limits: dict[str, Any] = {}
        if "calls" in cap:
            limits["max_calls"] = max(0, int(math.floor(cap["calls"])))
        if "tokens" in cap:
            limits["max_tokens"] = max(0, int(cap["tokens"]))
        if "usd" in cap:
            limits["max_usd"] = max(0.0, cap["usd"])
        return self.budget.child(name, **limits)

    def for_child(self, name: str, price: Price, raced_at: Price | None = None) -> Budget:
        """One raced validation at ``raced_at`` (default ``price``; with slack), never past the
        headroom, nor into what the test reserve would need should the child (at ``price``) win."""
        need = (raced_at or price).times(self.n_val * self.slack).plus(self.proposal)
        growth = self.reserve_growth(price)
        room = self.headroom()
        return self._capped(name, {k: min(v - getattr(growth, k), getattr(need, k)) for k, v in room.items()})

    def for_tuning(self, name: str, seed: bool, share: float | None = None) -> Budget:
        """The inner loop's share of the headroom (the seed's, an accepted structure's, or ``share``)."""
        share = share if share is not None else self.seed_tuning_share if seed else self.tuning_share
        return self._capped(name, {k: v * share for k, v in self.headroom().items()})

    def for_proposal(self, name: str) -> Budget:
        """A structural proposal (and its repair), never past the headroom."""
        room = self.headroom()
        return self._capped(name, {k: min(v, getattr(self.proposal, k)) if k == "calls" else v
                                   for k, v in room.items()})

    def candidates_afforded(self, price: Price, overhead: Price | None = None, raced_at: Price | None = None) -> int:
        """How many candidates at ``price`` the headroom pays a full raced validation for, keeping
        back the growth of the test reserve should one of them win (the search's own rule: zero
        exactly when :meth:`affords_candidate` is false)."""
        one, growth = self.full_validation(raced_at or price, overhead), self.reserve_growth(price)
        counts = []
        for k, room in self.headroom().items():
            per, left = getattr(one, k), room - getattr(growth, k)
            counts.append(int((left + 1e-9) // per) if per > 0 else (10**6 if left >= -1e-9 else 0))
        return max(0, min(counts)) if counts else 10**6
