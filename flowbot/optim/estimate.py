"""A projection of a run's calls, tokens and dollars per phase and role, before anything is paid.

The numbers are planning figures from the configuration, the task sizes and the length of the
task's inputs (about four characters per token), assuming half the minibatch fails and half of the
candidates pass the minibatch gate. They show what the budget allows and warn when it is too small
for one full round; the budget itself is what stops a run.

How many candidates the budget affords, and whether the run is refused because it affords none,
is not a separate model: it is :class:`~flowbot.optim.budgeting.BudgetPlan`'s own arithmetic (the
rule the search offers children by), run on the seed's projected price, with the seed's cached
validation and test answers counted as free when the run's cache already holds them, on every
capped dimension (calls, tokens, dollars).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode
from flowbot.graph.sketch import Workflow
from flowbot.lm.budget import Budget
from flowbot.optim.budgeting import BudgetPlan, Price, projected_price, race_price, structure_calls
from flowbot.optim.inner import cheapest_change, step_overhead
from flowbot.optim.operators import OperatorContext
from flowbot.optim.proposal import new_choices

FAIL_RATE = 0.5
GATE_PASS_RATE = 0.5
OPT_PROMPT_BASE = 700
OPT_COMPLETION = 250


@dataclass
class PhaseEstimate:
    task_calls: float = 0.0
    optimizer_calls: float = 0.0
    judge_calls: float = 0.0
    tokens: float = 0.0
    usd: float | None = 0.0

    @property
    def calls(self) -> float:
        return self.task_calls + self.optimizer_calls + self.judge_calls

    def add(self, other: "PhaseEstimate", times: float = 1.0) -> None:
        self.task_calls += other.task_calls * times
        self.optimizer_calls += other.optimizer_calls * times
        self.judge_calls += other.judge_calls * times
        self.tokens += other.tokens * times
        self.usd = None if self.usd is None or other.usd is None else self.usd + other.usd * times


@dataclass
class Estimate:
    phases: dict[str, PhaseEstimate]
    budget: str
    covers: float | None  # share of the planned work the budget pays for (None: unlimited)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: candidates (structures or rewrites) the budget pays a full raced validation for; None: unlimited
    candidates: int | None = None
    #: why the run cannot do anything useful with this budget (it is refused before paying), or None
    refusal: str | None = None

    @property
    def total(self) -> PhaseEstimate:
        t = PhaseEstimate()
        for p in self.phases.values():
            t.add(p)
        return t

    def to_dict(self) -> dict[str, Any]:
        def row(p: PhaseEstimate) -> dict[str, Any]:
            return {"task_calls": round(p.task_calls), "optimizer_calls": round(p.optimizer_calls),
                    "judge_calls": round(p.judge_calls), "tokens": round(p.tokens),
                    "usd": None if p.usd is None else round(p.usd, 4)}
        return {"phases": {k: row(v) for k, v in self.phases.items()}, "total": row(self.total),
                "budget": self.budget, "budget_covers": self.covers, "candidates_afforded": self.candidates,
                "refusal": self.refusal, "warnings": self.warnings, "notes": self.notes}

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _task_calls_per_example(wf: Workflow) -> float:
    calls = 0.0
    for n in wf.sketch.nodes:
        if isinstance(n, LLMNode):
            calls += 1 + (1.5 if wf.params[n.id].tools else 0)
        elif (isinstance(n, BranchNode) and n.mode == "llm") or (isinstance(n, MergeNode) and n.strategy == "select"):
            calls += 1
    return max(calls, 1.0)


#: the budget option of each capped dimension, for the refusal's advice
OPTIONS = {"calls": "--budget-calls", "tokens": "--budget-tokens", "usd": "--budget-usd"}


def _plan(cfg: Any, budget: Budget, seed_price: Price, V: int, test_n: int, uncached_val: int,
          uncached_test: int) -> BudgetPlan:
    """The run's budget plan as it will stand after the seed's validation (its uncached items
    paid) and the test reserve (the seed's uncached test items)."""
    lim = budget.limits
    after_seed = Budget(max_calls=lim.max_calls, max_tokens=lim.max_tokens, max_usd=lim.max_usd)
    paid = seed_price.times(uncached_val)
    after_seed.charge(int(round(paid.calls)), int(round(paid.tokens)), paid.usd)
    scope = getattr(getattr(cfg, "budget", None), "scope", "all")
    plan = BudgetPlan(after_seed, n_val=V, n_test=test_n, scope=scope)
    plan.set_seed(seed_price, uncached_test, cfg.compare_seed_on_test)
    return plan


def _first_candidate(cfg: Any, seed: Workflow, seed_price: Price, operators: OperatorContext | None
                     ) -> tuple[str, Price, Price | None, Price]:
    """What the search would race first, its price, its overhead (None: a structural proposal) and
    what its race pays per item (the cache answers the seed's unchanged nodes): the child on the
    seed's operator menu cheapest to race, or, for the inner loop alone, a rewrite."""
    if cfg.method == "inner-only" or (cfg.method == "flowbot" and cfg.outer.rounds == 0):
        overhead = step_overhead(seed_price, cfg.inner.minibatch_size, len(seed.tunable_nodes()))
        return "inner-loop rewrite", seed_price, overhead, cheapest_change(seed, seed_price)
    max_nodes = cfg.aflow.max_nodes if cfg.method == "aflow" else cfg.outer.max_nodes
    children = [c.child for c in new_choices(seed, operators, set(), max_nodes)] if operators is not None else []
    cheapest = min(children, key=lambda c: race_price(seed, seed_price, c).calls, default=seed)
    return ("structural candidate", projected_price(seed, seed_price, cheapest), None,
            race_price(seed, seed_price, cheapest))


def _afford(est: Estimate, plan: BudgetPlan, what: str, price: Price, overhead: Price | None,
            raced_at: Price) -> None:
    """How many candidates the plan pays a raced validation for (keeping back, should one win, its
    test evaluation) — the search's own rule; none is a refusal."""
    if not plan.headroom():
        return  # no call, token or dollar cap
    est.candidates = plan.candidates_afforded(price, overhead, raced_at)
    if est.candidates >= 1:
        est.notes.append(f"the budget pays for about {est.candidates} {what}(s) with a full raced validation "
                         "each (racing stops hopeless ones early, so usually more)")
        return
    room, need = plan.headroom(), plan.race_and_test(price, overhead, raced_at)
    short = {k: getattr(need, k) - v for k, v in room.items() if getattr(need, k) - v > 1e-9}
    limits = {"calls": plan.budget.limits.max_calls, "tokens": plan.budget.limits.max_tokens,
              "usd": plan.budget.limits.max_usd}
    raise_to = " and ".join(f"{OPTIONS[k]} to at least {_amount(k, limits[k] + gap)}" for k, gap in short.items())
    scoped = plan.scope == "all" and plan.n_test > 0
    est.refusal = (f"the budget of {est.budget} cannot pay for one {what}: after the seed's validation"
                   + (f" and the test reserve ({plan.reserved.describe()})" if scoped else "")
                   + ", one raced validation" + (" and, should it win, its test evaluation" if scoped else "")
                   + f" would take ≈{need.describe()} of the {_left(room)} left; raise {raise_to}"
                   + (" or use --budget-scope search" if scoped else ""))


def _left(room: dict[str, float]) -> str:
    return ", ".join(f"{_amount(k, max(0.0, v))} {k}" if k != "usd" else _amount(k, max(0.0, v)) for k, v in room.items())


def _amount(kind: str, value: float) -> str:
    return f"${value:.4f}" if kind == "usd" else f"{math.ceil(value - 1e-9):,}"


def _chars(example: dict[str, Any], fields: list[str]) -> int:
    return sum(len(json.dumps(example.get(f), ensure_ascii=False)) for f in fields)


def estimate_run(task: Any, seed: Workflow, config: Any, budget: Budget,
                 task_price: tuple[float, float] | None, optimizer_price: tuple[float, float] | None, *,
                 uncached: dict[str, int] | None = None, operators: OperatorContext | None = None) -> Estimate:
    """``uncached``: how many of the seed's validation and test items (``val``, ``test``) the
    run's cache does not answer (None: none is cached); ``operators``: the search's operator menu
    (the first structural candidate is the cheapest child on it)."""
    cfg = config
    sample = task.examples("val", 20) or task.examples("train", 20)
    input_tokens = (sum(_chars(e, task.inputs) for e in sample) / max(1, len(sample))) / 4
    instr_tokens = sum(len(p.instruction) for p in seed.params.values()) / 4
    t_prompt, t_completion = input_tokens + instr_tokens + 80, 250.0
    o_prompt, o_completion = OPT_PROMPT_BASE + 2 * t_prompt, float(OPT_COMPLETION)
    judged = getattr(task.metric, "__name__", "") == "llm_judge"

    def cost(calls: float, prompt: float, completion: float, price: tuple[float, float] | None) -> tuple[float, float | None]:
        tokens = calls * (prompt + completion)
        usd = None if price is None else calls * (prompt * price[0] + completion * price[1])
        return tokens, usd

    def phase(task_calls: float = 0.0, opt_calls: float = 0.0, examples: float = 0.0) -> PhaseEstimate:
        judge_calls = examples if judged else 0.0
        t_tok, t_usd = cost(task_calls, t_prompt, t_completion, task_price)
        o_tok, o_usd = cost(opt_calls + judge_calls, o_prompt, o_completion, optimizer_price)
        usd = None if t_usd is None or o_usd is None else t_usd + o_usd
        return PhaseEstimate(task_calls, opt_calls, judge_calls, t_tok + o_tok, usd)

    T = _task_calls_per_example(seed)
    K = max(1, len(seed.tunable_nodes()))
    sizes = task.sizes()
    V = min(cfg.val_size or sizes["val"], sizes["val"])
    test_n = min(cfg.test_size or sizes["test"], sizes["test"]) if cfg.evaluate_test else 0
    mb, steps, cands = cfg.inner.minibatch_size, cfg.inner.steps, cfg.inner.candidates
    failing = FAIL_RATE * mb

    uv = min(V, uncached["val"]) if uncached else V
    ut = min(test_n, uncached["test"]) if uncached else test_n
    phases: dict[str, PhaseEstimate] = {"seed evaluation": phase(uv * T, examples=uv)}
    step = phase(mb * T, examples=mb)  # forward
    step.add(phase(opt_calls=failing * (1 + K) + 2 * K))  # loss, backward, aggregate, step
    cand_examples = K * cands * (mb + GATE_PASS_RATE * V)
    step.add(phase(cand_examples * T, examples=cand_examples))
    tune = PhaseEstimate()
    tune.add(step, steps)
    if cfg.inner.demos:
        tune.add(phase(K * V * T, examples=K * V))

    if cfg.method == "aflow":
        rounds = cfg.aflow.rounds
        child = phase(V * T * 1.5, opt_calls=1, examples=V)
        search = PhaseEstimate()
        search.add(child, rounds)
        phases["AFlow search"] = search
    else:
        rounds = 0 if cfg.method == "inner-only" else cfg.outer.rounds
        phases["inner loop (seed)"] = tune
        outer = PhaseEstimate()
        outer.add(phase(opt_calls=1.5))
        outer.add(tune)
        outer.add(phase(V * T * 0.5, examples=V))  # children run more nodes than the seed
        search = PhaseEstimate()
        search.add(outer, rounds)
        phases["outer loop"] = search
    tested = test_n + (ut if cfg.compare_seed_on_test else 0)  # the best, and the seed's uncached items
    phases["test evaluation"] = phase(tested * T, examples=tested)

    est = Estimate(phases, budget.limits.describe(), None)
    total = est.total
    fractions = []
    lim = budget.limits
    if lim.max_calls is not None:
        fractions.append(lim.max_calls / max(1.0, total.calls))
    if lim.max_tokens is not None:
        fractions.append(lim.max_tokens / max(1.0, total.tokens))
    if lim.max_usd is not None and total.usd:
        fractions.append(lim.max_usd / total.usd)
    if fractions:
        est.covers = round(min(1.0, min(fractions)), 3)
        one_round = PhaseEstimate()
        for p in (phases["seed evaluation"], step, phases["test evaluation"]):
            one_round.add(p)
        short = (lim.max_calls is not None and lim.max_calls < one_round.calls) or (
            lim.max_tokens is not None and lim.max_tokens < one_round.tokens) or (
            lim.max_usd is not None and one_round.usd is not None and lim.max_usd < one_round.usd)
        if short:
            est.warnings.append(
                f"the budget ({est.budget}) is too small for one full round (seed evaluation, one inner step, "
                f"test evaluation ≈ {one_round.calls:.0f} calls, {one_round.tokens:,.0f} tokens): the run would "
                "return the seed workflow")
        elif est.covers < 1.0:
            est.notes.append(f"the budget pays for about {est.covers:.0%} of the planned work; the search stops "
                             "when it is used up and keeps the best workflow so far")
    # the plan's arithmetic, on the seed's price: its calls per example as the search counts them
    calls = structure_calls(seed)
    seed_price = phase(calls, examples=1)
    price = Price(seed_price.calls, seed_price.tokens, seed_price.usd or 0.0)
    plan = _plan(cfg, budget, price, V, test_n, uv, ut)
    _afford(est, plan, *_first_candidate(cfg, seed, price, operators))
    if uncached:
        est.notes.append(f"the run's cache answers the seed on {V - uv} of {V} validation and {test_n - ut} of "
                         f"{test_n} test items: not counted")
    if task_price is None or optimizer_price is None:
        est.notes.append("a model's price is unknown: dollars are not projected for it")
    est.notes.append(f"assumes {FAIL_RATE:.0%} of each minibatch fails and {GATE_PASS_RATE:.0%} of candidates pass "
                     f"the minibatch gate; {T:g} task call(s) per example for the seed")
    return est
