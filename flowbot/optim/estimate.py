"""A projection of a run's calls, tokens and dollars per phase and role, before anything is paid.

The numbers are planning figures from the configuration, the task sizes and the length of the
task's inputs (about four characters per token), assuming half the minibatch fails and half of the
candidates pass the minibatch gate. They show what the budget allows and warn when it is too small
for one full round; the budget itself is what stops a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode
from flowbot.graph.sketch import Workflow
from flowbot.lm.budget import Budget

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


def _afford(est: Estimate, phases: dict[str, PhaseEstimate], cfg: Any, budget: Budget, V: int, T: float,
            test_n: int, n_test: int, step: PhaseEstimate) -> None:
    """How many candidates the calls budget pays a full raced validation for (after the seed's
    validation and, when the budget covers it, the test); none is a refusal."""
    lim = budget.limits
    if lim.max_calls is None:
        return
    scope = getattr(getattr(cfg, "budget", None), "scope", "all")
    fixed = phases["seed evaluation"].calls + (T * test_n * n_test if scope == "all" else 0.0)
    left = lim.max_calls - fixed
    structural = cfg.method != "inner-only"
    one = V * T * (1.5 if structural else 1.0) + (2 if structural else step.optimizer_calls + 2 * 5 * T)
    est.candidates = max(0, int(left // one)) if left > 0 else 0
    if est.candidates < 1:
        what = "structural candidate" if structural else "inner-loop rewrite"
        est.refusal = (f"the budget of {lim.max_calls} calls cannot pay for one {what}: the seed's validation"
                       + (" and the test evaluation" if scope == "all" else "")
                       + f" take ≈{fixed:.0f} calls and one raced validation ≈{one:.0f}; raise --budget-calls "
                       f"to at least {fixed + one:.0f}" + (" or use --budget-scope search" if scope == "all" else ""))
    else:
        est.notes.append(f"the budget pays for about {est.candidates} candidate(s) with a full raced validation "
                         "each (racing stops hopeless ones early, so usually more)")


def _chars(example: dict[str, Any], fields: list[str]) -> int:
    return sum(len(json.dumps(example.get(f), ensure_ascii=False)) for f in fields)


def estimate_run(task: Any, seed: Workflow, config: Any, budget: Budget,
                 task_price: tuple[float, float] | None, optimizer_price: tuple[float, float] | None) -> Estimate:
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

    phases: dict[str, PhaseEstimate] = {"seed evaluation": phase(V * T, examples=V)}
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
    n_test = 1 + int(cfg.compare_seed_on_test)
    phases["test evaluation"] = phase(test_n * T * n_test, examples=test_n * n_test)

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
    _afford(est, phases, cfg, budget, V, T, test_n, n_test, step)
    if task_price is None or optimizer_price is None:
        est.notes.append("a model's price is unknown: dollars are not projected for it")
    est.notes.append(f"assumes {FAIL_RATE:.0%} of each minibatch fails and {GATE_PASS_RATE:.0%} of candidates pass "
                     f"the minibatch gate; {T:g} task call(s) per example for the seed")
    return est
