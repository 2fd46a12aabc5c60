"""The inner loop: textual-gradient optimization of every tunable node of a fixed-structure workflow.

    >>> # see tests/optim/test_inner.py for a complete example with a scripted LM
    >>> InnerConfig().minibatch_size
    5

One step: forward on a minibatch (traces + scores) → a textual loss for each example below full
score → backward pass, node by node in reverse topological order → gradients aggregated per node →
the optimizer rewrites each blamed node's instruction → a candidate must gain on the minibatch it
was made for, then is raced against the current workflow on validation (paired, stopped early when
it cannot win; see :mod:`flowbot.optim.racing`) and kept only if it wins. Given the run's budget
plan, a candidate is raced only when the plan holds its validation and, should it win, its test
evaluation, and a winner's test is reserved at once. The loop stops at ``steps``, when the budget
cannot pay for another step, or after ``patience`` steps without a gain.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from flowbot.graph.nodes import Demo, LLMNode
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.lm.budget import RoleUsage, UsageMeter
from flowbot.lm.client import LMClient
from flowbot.optim import backward as bw
from flowbot.optim import defaults as D
from flowbot.optim.budgeting import OPTIMIZER_CALL_TOKENS, ZERO, BudgetPlan, Price, projected_price, race_price
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.events import EventSink, InnerCandidate, InnerStep, Patience
from flowbot.optim.policies import BlameOrder, MinibatchGate, MinibatchSampler, MinibatchSampling, NodeSelection
from flowbot.optim.racing import Acceptance, PairedRacing, RaceResult
from flowbot.optim.specificity import specific_terms
from flowbot.runtime.batch import BatchResult, ExampleResult
from flowbot.runtime.executor import Executor


@dataclass
class InnerConfig:
    steps: int = D.INNER_STEPS  # minibatches (each may step several nodes)
    minibatch_size: int = D.MINIBATCH_SIZE
    candidates: int = D.CANDIDATES  # instruction rewrites proposed per node per step
    patience: int = 3  # steps without a validation gain before stopping
    feedback: Literal["backward", "global"] = D.FEEDBACK
    #: how a blamed node's instruction changes: ``rewrite`` rewrites it whole (the paper's step);
    #: ``rule`` adds one general rule to it (robust with small optimizer models, which rewrite an
    #: instruction into the example they just read)
    step: Literal["rewrite", "rule"] = D.STEP
    max_rules: int = 8  # rules a node's instruction may gather before the rule step leaves it alone
    #: drop, before it is paid for, a change naming things of the minibatch's examples (see specificity.py)
    specificity_guard: bool = D.SPECIFICITY_GUARD
    demos: int = D.DEMOS  # few-shot demos to try per llm node (bootstrapped from successful traces); 0 = off
    #: demo sets raced per llm node in one tuning, each of solved training examples the node was not
    #: shown before (a random search over demo sets, as DSPy's BootstrapFewShotWithRandomSearch);
    #: 1 = one set, and only for a node that has no demos yet
    demo_sets: int = D.DEMO_SETS
    #: training examples a tuning may run, beyond its minibatches, to fill a demo set up to ``demos``
    #: before racing it (DSPy's bootstrapping: run the program on training data until enough traces
    #: succeed); 0 = a set holds only what the minibatches solved
    demo_bootstrap: int = D.DEMO_BOOTSTRAP
    #: whose solved traces become demos: ``task`` (the task model's own, as above) or ``optimizer``
    #: (a teacher, as DSPy's BootstrapFewShot with a teacher: the optimizer model runs the workflow on
    #: the minibatch's failed examples, then on up to ``demo_bootstrap`` more, and what it solves is shown
    #: to the task model; its calls count as the optimizer's)
    demo_teacher: Literal["task", "optimizer"] = D.DEMO_TEACHER
    minibatch_gate: bool = True
    full_score: float = 1.0
    max_nodes_per_step: int | None = None
    concurrency: int = D.CONCURRENCY
    seed: int = D.RANDOM_SEED


#: one judged change (an instruction rewrite or a demo set): the record is the run event itself
StepRecord = InnerCandidate


@dataclass
class Failure:
    example_id: str
    inputs: dict[str, Any]
    prediction: Any
    gold: Any
    score: float
    loss: str

    def brief(self, limit: int = 300) -> str:
        return (f"inputs {bw.brief_fields(self.inputs, limit // 2)} | output {bw.clip(self.prediction, 120)} | "
                f"correct {bw.clip(self.gold, 120)} | {bw.clip(self.loss, limit)}")


@dataclass
class InnerResult:
    workflow: Workflow
    val: BatchResult
    initial_val_score: float
    steps: list[StepRecord]
    blame: Counter
    failures: list[Failure]
    stopped: str | None
    usage: dict[str, dict[str, Any]]
    wall_s: float
    races: list[RaceResult] = field(default_factory=list)

    @property
    def val_score(self) -> float:
        return self.val.score


def step_overhead(price: Price, minibatch: int, nodes: int) -> Price:
    """What one inner step costs besides its raced validation: the forward pass and the candidate on
    the minibatch at ``price``, and the optimizer's calls (a loss and a backward call per failing
    example, an aggregation and a rewrite per node)."""
    nodes = max(1, nodes)
    opt_calls = minibatch * (1 + nodes) + 2 * nodes
    return price.times(2 * minibatch).plus(Price(opt_calls, OPTIMIZER_CALL_TOKENS * opt_calls, 0.0))


def cheapest_change(workflow: Workflow, price: Price) -> Price:
    """What racing the cheapest change of one tunable node costs per item (the cache answers the
    nodes upstream of it): the least an inner step's race can cost."""
    changed = (workflow.with_params(n.id, instruction=workflow.params[n.id].instruction + " ")
               for n in workflow.tunable_nodes())
    return min((race_price(workflow, price, c) for c in changed), key=lambda p: p.calls, default=price)


def _usage_delta(before: dict[str, RoleUsage], after: dict[str, RoleUsage]) -> dict[str, dict[str, Any]]:
    out = {}
    for role, a in after.items():
        b = before.get(role, RoleUsage())
        delta = {
            "calls": a.calls - b.calls,
            "cached_calls": a.cached_calls - b.cached_calls,
            "prompt_tokens": a.prompt_tokens - b.prompt_tokens,
            "completion_tokens": a.completion_tokens - b.completion_tokens,
            "cost_usd": round(a.cost_usd - b.cost_usd, 6),
        }
        if any(delta.values()):
            out[role] = delta
    return out


class InnerLoop:
    """Tunes one workflow; see the module docstring. ``optimizer`` is the optimizer-role LM client;
    ``plan``: the run's budget plan (None: only the evaluator's and optimizer's budgets count)."""

    def __init__(
        self,
        evaluator: Evaluator,
        optimizer: LMClient,
        ctx: bw.GradContext,
        config: InnerConfig | None = None,
        *,
        meter: UsageMeter | None = None,
        on_event: EventSink | None = None,
        tool_options: list[str] | None = None,
        racing: Acceptance | None = None,
        node_selection: NodeSelection | None = None,
        gate: MinibatchGate | None = None,
        plan: BudgetPlan | None = None,
    ) -> None:
        self.evaluate = evaluator
        self.opt = optimizer
        self.ctx = ctx
        self.cfg = config or InnerConfig()
        self.meter = meter or optimizer.meter
        self.emit = on_event or (lambda e: None)
        self.tool_options = tool_options
        self.racing: Acceptance = racing or PairedRacing()
        self.gate = gate or MinibatchGate(self.cfg.minibatch_gate)
        self.node_order = node_selection or BlameOrder(self.cfg.max_nodes_per_step)
        self.plan = plan
        self._teacher_eval: Evaluator | None = None

    async def optimize(self, workflow: Workflow, train: list[dict[str, Any]], val: list[dict[str, Any]],
                       label: str = "", *, val_result: BatchResult | None = None,
                       sampler: MinibatchSampling | None = None,
                       demo_pool: list[ExampleResult] | None = None) -> InnerResult:
        """Tune ``workflow``. ``val_result``: its validation results when already known (the
        incumbent's); ``sampler``: the run's minibatch sampler, so training data is walked as one
        epoch across every workflow the run tunes; ``demo_pool``: the run's training examples solved
        so far, which this call adds to and draws demos from (newest first)."""
        start = time.perf_counter()
        usage0 = self.meter.snapshot()
        state = _State(workflow, sampler or MinibatchSampler(train, self.cfg.minibatch_size, self.cfg.seed))
        if demo_pool is not None:
            state.successes = demo_pool
        stopped: str | None = None
        try:
            state.val = val_result if val_result is not None else \
                await self.evaluate(workflow, val, f"{label}validating seed")
            state.initial = state.val.score
            await self._loop(state, val, label)
        except BudgetExceeded as exc:
            stopped = str(exc)
        if state.val is None:  # the budget ran out before the seed was scored
            state.val = BatchResult(results=[], requested=len(val), stopped=stopped)
        return InnerResult(
            workflow=state.workflow, val=state.val, initial_val_score=state.initial, steps=state.records,
            blame=state.blame, failures=state.failures[-8:], stopped=stopped or state.stopped, races=state.races,
            usage=_usage_delta(usage0, self.meter.snapshot()), wall_s=time.perf_counter() - start,
        )

    def affords_step(self, state: "_State", val: list[dict[str, Any]]) -> bool:
        """Whether the budget left can pay for one more step (see :func:`step_overhead`) with one
        raced validation; and whether the run's plan holds that and, should the rewrite win, its test."""
        price = Price.of(state.val)
        overhead = step_overhead(price, self.cfg.minibatch_size, len(state.workflow.tunable_nodes()))
        raced_at = cheapest_change(state.workflow, price)
        if self.plan is not None and not self.plan.affords_candidate(price, overhead, raced_at):
            return False
        budget = self.opt.budget
        left = budget.remaining_calls() if budget is not None else None
        return left is None or left >= raced_at.calls * len(val) + overhead.calls

    async def _loop(self, state: "_State", val: list[dict[str, Any]], label: str) -> None:
        no_gain = 0
        for step in range(1, self.cfg.steps + 1):
            if not self.affords_step(state, val):
                state.stopped = "the budget left cannot pay for another inner step with a full raced validation"
                break
            batch = state.sampler.next()
            before = state.val.score
            changed = await self._step(state, step, batch, val, label)
            no_gain = 0 if changed and state.val.score > before + 1e-12 else no_gain + 1
            if no_gain >= self.cfg.patience:
                self.emit(Patience(loop="inner", step=step))
                break

    async def _step(self, state: "_State", step: int, batch: list[dict[str, Any]], val: list[dict[str, Any]],
                    label: str) -> bool:
        usage0 = self.meter.snapshot()
        accepted_before = sum(r.accepted for r in state.records)
        forward = await self.evaluate(state.workflow, batch, f"{label}step {step}: forward")
        state.successes.extend(r for r in forward.results if r.score >= self.cfg.full_score)
        failing = [r for r in forward.results if r.score < self.cfg.full_score]
        gradients = await self._gradients(state, failing)
        stepped = 0
        for node_id in self.node_order.select(gradients):
            state.usage_mark = self.meter.snapshot()  # a record's cost runs from its aggregation on
            if self.cfg.step == "rule":
                forward = await self._try_rule(state, step, node_id, bw.listed(gradients[node_id], self.ctx),
                                               batch, forward, val, label, bw.node_cases(node_id, failing, self.ctx))
            else:
                gradient = await bw.aggregate(self.opt, node_id, state.workflow.params[node_id].instruction,
                                              gradients[node_id], self.ctx)
                forward = await self._try_instruction(state, step, node_id, gradient, batch, forward, val, label)
            stepped += 1
        if self.cfg.demos:
            for node in state.workflow.llm_nodes():
                if state.demos_tried[node.id] < self.cfg.demo_sets:
                    forward = await self._try_demos(state, step, node, forward, batch, val, label)
        self.emit(InnerStep(step=step, failing=len(failing), nodes_stepped=stepped, val_score=state.val.score,
                            usage=_usage_delta(usage0, self.meter.snapshot())))
        return sum(r.accepted for r in state.records) > accepted_before

    async def _gradients(self, state: "_State", failing: list[ExampleResult]) -> dict[str, list[str]]:
        wf = state.workflow
        losses = await bw.gather_limited(
            [bw.textual_loss(self.opt, wf, r, self.ctx) for r in failing], self.cfg.concurrency)
        for r, loss in zip(failing, losses):
            state.failures.append(Failure(r.example_id, {f: r.example.get(f) for f in wf.sketch.inputs},
                                          r.prediction.get(self.ctx.output_field),
                                          {f: r.example.get(f) for f in self.ctx.target_fields}, r.score, loss))
        gradients: dict[str, list[str]] = {}
        if self.cfg.feedback == "global":
            # ablation: one critique of the final output sent to every tunable node, no backward pass
            for loss in losses:
                for node in wf.tunable_nodes():
                    gradients.setdefault(node.id, []).append(loss)
            return gradients
        results = await bw.gather_limited(
            [bw.backward(self.opt, wf, r.trace, loss, self.ctx) for r, loss in zip(failing, losses)
             if r.trace is not None], self.cfg.concurrency)
        state.blame.update(bw.blame_counts(results))
        for res in results:
            for node_id, g in res.gradients.items():
                gradients.setdefault(node_id, []).append(g)
        return gradients

    async def _try_instruction(self, state: "_State", step: int, node_id: str, gradient: str,
                               batch: list[dict[str, Any]], forward: BatchResult, val: list[dict[str, Any]],
                               label: str) -> BatchResult:
        wf = state.workflow
        node = wf.sketch.node(node_id)
        options = self.tool_options if isinstance(node, LLMNode) and self.tool_options else None
        proposals = await bw.propose_instructions(self.opt, wf, node, gradient, state.history.get(node_id, []),
                                                  self.ctx, k=self.cfg.candidates, tool_options=options)
        for p in proposals:
            terms = self._specific(p.instruction, batch, wf, node_id)
            if terms:
                self._dropped(state, step, node_id, "instruction", p.instruction, gradient, forward, terms)
                continue
            changes: dict[str, Any] = {"instruction": p.instruction}
            if p.tools is not None and p.tools != wf.params[node_id].tools:
                changes["tools"] = p.tools
            candidate = wf.with_params(node_id, **changes)
            forward, done = await self._judge(state, step, node_id, "instruction", wf.params[node_id].instruction,
                                              p.instruction, gradient, candidate, batch, forward, val, label)
            if done:
                break
        return forward

    async def _try_rule(self, state: "_State", step: int, node_id: str, gradient: str, batch: list[dict[str, Any]],
                        forward: BatchResult, val: list[dict[str, Any]], label: str, cases: str) -> BatchResult:
        """Add one general rule to the node's instruction; a rule naming the minibatch's examples is
        asked for once more (sampled), then dropped, before any evaluation is paid."""
        wf = state.workflow
        old = wf.params[node_id].instruction
        if bw.rule_count(old) >= self.cfg.max_rules:
            return forward
        terms: list[str] | None = None
        for attempt in range(2):
            rule = await bw.propose_rule(self.opt, wf, wf.sketch.node(node_id), gradient,
                                         state.history.get(node_id, []), self.ctx, retry_terms=terms,
                                         seed=self.cfg.seed + step if terms else None, cases=cases)
            if rule is None:
                return forward
            terms = self._specific(rule, batch, wf, node_id)
            if not terms:
                candidate = wf.with_params(node_id, instruction=bw.with_rule(old, rule))
                forward, _ = await self._judge(state, step, node_id, "rule", old, candidate.params[node_id].instruction,
                                               gradient, candidate, batch, forward, val, label, remembered=rule)
                return forward
            self._dropped(state, step, node_id, "rule", bw.with_rule(old, rule), gradient, forward, terms)
        return forward

    def _specific(self, text: str, batch: list[dict[str, Any]], wf: Workflow, node_id: str) -> list[str]:
        if not self.cfg.specificity_guard:
            return []
        node = wf.sketch.node(node_id)
        allowed = "\n".join([wf.params[node_id].instruction, self.ctx.task_description, getattr(node, "purpose", "")])
        return specific_terms(text, batch, allowed)

    def _dropped(self, state: "_State", step: int, node_id: str, change: str, new: str, gradient: str,
                 forward: BatchResult, terms: list[str]) -> None:
        """Record a change dropped as example-specific (it cost only the optimizer's proposal)."""
        usage0 = state.usage_mark or self.meter.snapshot()
        record = StepRecord(step, node_id, change, state.workflow.params[node_id].instruction, new, gradient,
                            forward.score, None, state.val.score, None, False,
                            "too specific: names " + ", ".join(f"'{t}'" for t in terms[:4]) + " from the minibatch")
        record.cost = _usage_delta(usage0, self.meter.snapshot())
        state.usage_mark = self.meter.snapshot()
        state.records.append(record)
        self.emit(record)

    async def _try_demos(self, state: "_State", step: int, node: LLMNode, forward: BatchResult,
                         batch: list[dict[str, Any]], val: list[dict[str, Any]], label: str) -> BatchResult:
        wf = state.workflow
        current = wf.params[node.id].demos
        if current and self.cfg.demo_sets == 1:
            return forward  # one set per node: a node that has demos keeps them
        shown = state.demos_offered.setdefault(node.id, list(current))
        teacher = self.cfg.demo_teacher == "optimizer"
        # training examples only: a demo drawn from a validation example would leak its answer; the
        # newest first, so a node tuned again (a later round) is offered demos it was not offered before
        demos = [] if teacher else self._fresh_demos(reversed(state.successes), node, shown, [])
        ran = 0
        if len(demos) < self.cfg.demos and (teacher or self.cfg.demo_bootstrap) and self.affords_step(state, val):
            state.usage_mark = self.meter.snapshot()  # the demo set's record carries what filling it cost
            # the teacher starts on the minibatch's examples the task model failed: what it most needs shown
            failed = {r.example_id for r in forward.results if r.score < self.cfg.full_score}
            first = [ex for ex in batch if str(ex.get("id")) in failed] if teacher else []
            ran = await self._fill(state, step, node, shown, demos, label, teacher, first)
        if not demos:
            if ran:  # the filling found nothing: its mark is not left for the next record
                state.usage_mark = None
            return forward
        state.demos_tried[node.id] += 1
        shown.extend(demos)
        candidate = wf.with_params(node.id, demos=demos)
        forward, _ = await self._judge(state, step, node.id, "demos", f"{len(current)} demos",
                                       f"{len(demos)} demos", _demo_origin(teacher, ran),
                                       candidate, batch, forward, val, label, gate=False)
        return forward

    def _fresh_demos(self, results: Iterable[ExampleResult], node: LLMNode, shown: list[Demo],
                     demos: list[Demo]) -> list[Demo]:
        """``demos`` extended, up to the configured count, with the node's step in solved ``results``
        that neither it nor ``shown`` holds."""
        for r in results:
            if len(demos) >= self.cfg.demos:
                break
            run = r.trace.nodes.get(node.id) if r.trace else None
            if run is not None and run.ok and run.raw and run.inputs.keys() >= set(node.reads):
                demo = Demo(inputs={f: run.inputs[f] for f in node.reads}, output=run.raw[-1])
                if demo not in demos and demo not in shown:
                    demos.append(demo)
        return demos

    async def _fill(self, state: "_State", step: int, node: LLMNode, shown: list[Demo], demos: list[Demo],
                    label: str, teacher: bool, first: list[dict[str, Any]]) -> int:
        """Fill ``demos`` from solved runs of the workflow on ``first``, then on up to
        ``demo_bootstrap`` further training examples (from the loop's sampler, so an epoch still walks
        every example once); returns how many examples ran. Run by the task model (DSPy's
        bootstrapping: what it solves also joins the run's pool of solved examples) or by the teacher,
        which runs only as many at a time as the set still needs (its calls are dearer)."""
        evaluate = self._teacher() if teacher else self.evaluate
        what = "the teacher solving for demos" if teacher else "bootstrapping demos"
        queue, ran, drawn = list(first), 0, 0
        while len(demos) < self.cfg.demos:
            if not queue:
                if drawn >= self.cfg.demo_bootstrap:
                    break
                queue = state.sampler.next()[: self.cfg.demo_bootstrap - drawn]
                drawn += len(queue)
            take = self.cfg.demos - len(demos) if teacher else len(queue)
            chunk, queue = queue[:take], queue[take:]
            ran += len(chunk)
            result = await evaluate(state.workflow, chunk, f"{label}step {step}: {what} of {node.id}")
            solved = [r for r in result.results if r.score >= self.cfg.full_score]
            if not teacher:
                state.successes.extend(solved)
            self._fresh_demos(solved, node, shown, demos)
        return ran

    def _teacher(self) -> Evaluator:
        """The workflow run by the optimizer model in every step; a memo of its own, so its results
        are never taken for the task model's."""
        if self._teacher_eval is None:
            ev = self.evaluate
            self._teacher_eval = Evaluator(Executor(self.opt, tools=ev.executor.tools), ev.metric,
                                           concurrency=ev.concurrency)
        return self._teacher_eval

    async def _judge(self, state: "_State", step: int, node_id: str, change: str, old: str, new: str,
                     gradient: str, candidate: Workflow, batch: list[dict[str, Any]], forward: BatchResult,
                     val: list[dict[str, Any]], label: str, gate: bool = True,
                     remembered: str | None = None) -> tuple[BatchResult, bool]:
        """Minibatch gate, then a validation race against the current workflow. Returns the forward
        result of the kept workflow and whether the candidate was kept; ``remembered``: what the
        node's history keeps of the change (a rule rather than the whole instruction)."""
        usage0 = state.usage_mark or self.meter.snapshot()
        mb = await self.evaluate(candidate, batch, f"{label}step {step}: candidate on minibatch")
        record = StepRecord(step, node_id, change, old, new, gradient, forward.score, mb.score,
                            state.val.score, None, False, "")
        if gate and not self.gate.passes(mb.score, forward.score):
            record.reason = "no gain on the minibatch"
        elif not self._affordable(state, candidate, mb):
            record.reason = "its raced validation and, should it win, its test evaluation do not fit in the budget left"
        else:
            result: RaceResult = await self.racing.race(self.evaluate, candidate, state.val, val,
                                                        f"{label}step {step}: racing the candidate")
            if self.plan is not None:
                self.plan.check_winner(result)
            record.race = result.to_dict()
            record.val_after = result.batch.score if result.complete else None
            record.reason = result.reason
            state.races.append(result)
            if result.accepted:
                record.accepted = True
                state.workflow, state.val, forward = candidate, result.batch, mb
                if self.plan is not None:  # the winner is what the test evaluation now pays for
                    self.plan.reserve_test(Price.of(result.batch), best_is_seed=False)
            if change in ("instruction", "rule"):  # what the next proposal for this node is shown
                state.history.setdefault(node_id, []).append((remembered or new, result.batch.score))
        record.cost = _usage_delta(usage0, self.meter.snapshot())
        state.usage_mark = None
        state.records.append(record)
        self.emit(record)
        return forward, record.accepted


    def _affordable(self, state: "_State", candidate: Workflow, mb: BatchResult) -> bool:
        """Whether the plan holds the candidate's raced validation and, should it win, its test.
        Its price: projected from the current workflow's (a rewrite may give a node a tool: two
        calls per example), and no less than it measured on the minibatch (demos lengthen prompts)."""
        if self.plan is None:
            return True
        price = projected_price(state.workflow, Price.of(state.val), candidate).at_least(Price.of(mb))
        return self.plan.affords_candidate(price, overhead=ZERO,
                                           raced_at=race_price(state.workflow, Price.of(state.val), candidate))


def _demo_origin(teacher: bool, ran: int) -> str:
    if teacher:
        return f"solved by the optimizer model as teacher ({ran} training examples run)"
    return "bootstrapped from successful traces" + (f" ({ran} training examples run to fill the set)" if ran else "")


class _State:
    def __init__(self, workflow: Workflow, sampler: MinibatchSampling) -> None:
        self.workflow = workflow
        self.sampler = sampler  # the loop's walk over training data (minibatches, demo bootstrapping)
        self.val: BatchResult | None = None
        self.initial = 0.0
        self.records: list[StepRecord] = []
        self.history: dict[str, list[tuple[str, float]]] = {}
        self.blame: Counter = Counter()
        self.failures: list[Failure] = []
        self.demos_tried: Counter = Counter()  # demo sets raced, per node
        self.demos_offered: dict[str, list[Demo]] = {}  # every demo a node has had or been offered
        self.successes: list[ExampleResult] = []  # training examples solved so far (demo pool)
        self.usage_mark: dict[str, RoleUsage] | None = None
        self.races: list[RaceResult] = []
        self.stopped: str | None = None
