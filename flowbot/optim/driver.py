"""The bilevel driver: one optimization run in one run directory, resumable.

``run_optimization`` scores the seed, plans the budget (each candidate priced in evaluations; the
test split reserved exactly, from the price of the workflow that will be tested and the seed's
uncached test items — or kept outside the cap with ``budget_scope="search"``), searches (FlowBot's
bilevel loop, the inner loop alone, or the AFlow-style baseline, all judging candidates by the same
paired racing rule), then evaluates the best workflow (and the seed, for comparison) on the test
split once. Everything is logged to the run directory; re-running with the same directory replays
the cache and the log and continues where the run stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Literal

from flowbot.errors import FlowBotError
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.lm.budget import Budget, RoleUsage, total_usage
from flowbot.lm.client import LMClient
from flowbot.optim import defaults as D
from flowbot.optim.aflow import AFlowConfig, aflow_search
from flowbot.optim.archive import ArchiveEntry, Objective
from flowbot.optim.budgeting import BudgetPlan, Price, Scope
from flowbot.optim.evaluation import Evaluator, with_ids
from flowbot.optim.events import (BudgetPlanned, BudgetWarning, CandidateAccepted, CandidateEvaluated, Event,
                                  OutputWarning, RunFinished, RunStarted, SeedEvaluated, TestEvaluated)
from flowbot.optim.backward import GradContext
from flowbot.optim.inner import InnerConfig, InnerLoop
from flowbot.optim.operators import OperatorContext
from flowbot.optim.outer import OuterConfig, flowbot_search
from flowbot.optim.policies import MinibatchSampler
from flowbot.optim.racing import PairedRacing
from flowbot.optim.rundir import RunDir
from flowbot.optim.search import SearchResult, StructureSearch, Tuned
from flowbot.optim.stats import paired_difference
from flowbot.runtime.batch import BatchResult
from flowbot.runtime.executor import Executor
from flowbot.scoring.result import Metric
from flowbot.tools.base import ToolRegistry

Method = Literal["flowbot", "inner-only", "aflow"]


@dataclass
class RacingConfig:
    """The acceptance rule every loop shares (see :class:`flowbot.optim.racing.PairedRacing`)."""

    margin: int = D.MARGIN
    alpha: float = D.ALPHA
    cheaper_by: float = 0.2
    seed: int = D.RANDOM_SEED

    def rule(self, chunk: int) -> PairedRacing:
        return PairedRacing(margin=self.margin, alpha=self.alpha, cheaper_by=self.cheaper_by, chunk=chunk,
                            seed=self.seed)


@dataclass
class BudgetConfig:
    """How the budget is divided: ``scope`` (``all``: the cap covers the test evaluation too, which
    is reserved; ``search``: the cap is the search's, the test is paid and reported apart), and the
    inner loop's shares of what is left (the seed's tuning, an accepted structure's tuning)."""

    scope: Scope = D.BUDGET_SCOPE
    seed_tuning_share: float = 0.4
    tuning_share: float = 0.5


@dataclass
class OptimizeConfig:
    method: Method = D.METHOD
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    aflow: AFlowConfig = field(default_factory=AFlowConfig)
    racing: RacingConfig = field(default_factory=RacingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    objective: Objective = field(default_factory=Objective)
    train_size: int | None = D.TRAIN_SIZE
    val_size: int | None = D.VAL_SIZE
    test_size: int | None = None
    evaluate_test: bool = True
    compare_seed_on_test: bool = True
    concurrency: int = D.CONCURRENCY
    seed: int = D.RANDOM_SEED
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The settings, without the sections this method does not use."""
        unused = {"flowbot": ("aflow",), "inner-only": ("outer", "aflow"), "aflow": ("inner", "outer")}
        return {k: v for k, v in asdict(self).items() if k not in unused.get(self.method, ())}


@dataclass
class OptimizationResult:
    best: Workflow
    best_id: str
    val_score: float | None  # None when the budget ran out before anything was scored
    seed_val_score: float | None
    test: BatchResult | None
    seed_test: BatchResult | None
    front: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    usage: dict[str, dict[str, Any]]
    phases: dict[str, dict[str, Any]]
    stopped: str | None
    run_dir: str
    resumed: bool
    replayed_events: int
    wall_s: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def test_score(self) -> float | None:
        return self.test.score if self.test is not None else None


@dataclass
class TaskData:
    """What the driver needs from a task (kept small so tasks stay in their own layer)."""

    name: str
    description: str
    output_field: str
    target_fields: list[str]
    metric: Metric
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    tools: list[str] | None = None  # the tools that make sense for the task (None: every registered one)
    context_fields: list[str] = field(default_factory=list)


def _phase(before: dict[str, RoleUsage], after: dict[str, RoleUsage]) -> dict[str, Any]:
    a, b = total_usage(after), total_usage(before)
    return {"calls": a.calls - b.calls, "tokens": (a.prompt_tokens + a.completion_tokens) - (b.prompt_tokens + b.completion_tokens),
            "cost_usd": round(a.cost_usd - b.cost_usd, 6)}


def operator_context(task: TaskData, tools: ToolRegistry) -> OperatorContext:
    """The operators may use only the tools the task declares (every registered one if it declares none)."""
    signatures = tools.signatures()
    allowed = signatures if task.tools is None else {n: signatures[n] for n in task.tools if n in signatures}
    return OperatorContext(tools=allowed, context_fields=tuple(task.context_fields),
                           task_description=task.description)


async def uncached_items(executor: Executor, workflow: Workflow, examples: list[dict[str, Any]]) -> int:
    """How many examples would make at least one paid call: the workflow is run with a cache-only
    client, which fails every node whose answer is not cached (nothing is paid, nothing loads)."""
    probe = Executor(executor.lm.cache_only(), tools=executor.tools)
    missing = 0
    for ex in examples:
        trace = await probe.run(workflow, {f: ex[f] for f in workflow.sketch.inputs if f in ex})
        missing += int(any(r.error and "not in the cache" in r.error for r in trace.nodes.values()))
    return missing


async def run_optimization(
    task: TaskData,
    seed: Workflow,
    task_lm: LMClient,
    optimizer_lm: LMClient,
    *,
    tools: ToolRegistry,
    config: OptimizeConfig,
    run_dir: RunDir,
    budget: Budget,
    resumed: bool = False,
    models: Callable[[str], LMClient] | None = None,
) -> OptimizationResult:
    start = time.perf_counter()
    cfg = config
    train = with_ids(task.train[: cfg.train_size] if cfg.train_size is not None else task.train)
    val = with_ids(task.val[: cfg.val_size] if cfg.val_size is not None else task.val)
    test = with_ids(task.test[: cfg.test_size] if cfg.test_size is not None else task.test)
    if not val:
        raise FlowBotError(f"task {task.name}: the validation split is empty; the optimizer needs held-out examples")
    if cfg.method != "aflow" and not train:
        raise FlowBotError(f"task {task.name}: the training split is empty")
    budget.add_stop_condition(run_dir.stop_requested)
    meter = task_lm.meter
    raw_log = run_dir.events

    def log(event: Event | dict[str, Any]) -> None:
        # cumulative usage by role with every event, so reports can plot spend over the run exactly
        data = event.to_dict() if isinstance(event, Event) else event
        raw_log({**data, "usage_total": meter.to_dict()})

    log(RunStarted(method=cfg.method, task=task.name, resumed=resumed,
                   sizes={"train": len(train), "val": len(val), "test": len(test)},
                   budget=budget.limits.describe(), task_model=task_lm.model, optimizer_model=optimizer_lm.model))

    def evaluator_for(b: Budget | None) -> Evaluator:
        return base_eval.with_executor(Executor(task_lm.with_budget(b), tools=tools, models=models))

    base_eval = Evaluator(Executor(task_lm, tools=tools, models=models), task.metric,
                          concurrency=cfg.concurrency, progress=cfg.progress)
    snap0 = meter.snapshot()
    stopped: str | None = None
    outcome: SearchResult | None = None
    seed_val: BatchResult | None = None
    try:
        seed_val = await base_eval(seed, val, "validating the seed")
        log(SeedEvaluated(val_score=seed_val.score, calls=seed_val.calls, tokens=seed_val.usage.total_tokens,
                          cost_usd=seed_val.usage.cost_usd))
        if stuck := seed_val.stuck_output():
            log(OutputWarning(message=f"the seed on validation: {stuck}"))
    except BudgetExceeded as exc:
        stopped = str(exc)
    snap_seed = meter.snapshot()

    if seed_val is not None:
        plan = BudgetPlan(budget, n_val=len(val), n_test=len(test) if cfg.evaluate_test else 0,
                          scope=cfg.budget.scope, seed_tuning_share=1.0 if cfg.method == "inner-only"
                          else cfg.budget.seed_tuning_share, tuning_share=cfg.budget.tuning_share)
        uncached = await uncached_items(base_eval.executor, seed, test) if plan.n_test and plan.scope == "all" else 0
        reserve = plan.set_seed(Price.of(seed_val), uncached, cfg.compare_seed_on_test)
        log(BudgetPlanned(search=budget.limits.describe(), scope=plan.scope,
                          reserved_for_test=f"{reserve.describe()} ({uncached} of {len(test)} seed test items "
                          "uncached)" if plan.scope == "all" else "none (the test is outside the search budget)",
                          seed_tuning=f"{plan.seed_tuning_share:.0%} of the budget left",
                          child_full_validation=asdict(plan.full_validation(Price.of(seed_val)))))
        if not plan.affords_candidate(Price.of(seed_val)):
            log(BudgetWarning(message="the budget is too small for one candidate's raced validation and its "
                                      "test evaluation after reserving the seed's; the seed is returned"))
        outcome, stopped = await _search(task, seed, seed_val, train, val, cfg, optimizer_lm, tools, evaluator_for,
                                         plan, log, meter, run_dir)
    snap_search = meter.snapshot()

    if outcome is not None:
        best_entry = outcome.best
    else:
        best_entry = ArchiveEntry(id="c0", workflow=seed, val_score=seed_val.score if seed_val else 0.0,
                                  cost_per_example=0.0, tokens_per_example=0.0)
    run_dir.save_best(best_entry.workflow)

    test_res = seed_test = None
    # a stop the user asked for ends the run here: with scope "search" the test evaluation is outside
    # the budget (and its stop condition), and a stopped search's best is not the run's result
    user_stop = run_dir.stop_requested()
    if user_stop:
        stopped = user_stop
    if cfg.evaluate_test and test and not user_stop:
        # scope "search": the test is paid outside the cap (and reported apart); "all": from the reserve
        test_eval = evaluator_for(budget if cfg.budget.scope == "all" else None)
        try:
            test_res = await test_eval(best_entry.workflow, test, "testing the best workflow")
            log(TestEvaluated(id=best_entry.id, score=test_res.score, n=len(test_res.results)))
            if cfg.compare_seed_on_test:
                seed_test = await test_eval(seed, test, "testing the seed")
                log(TestEvaluated(id="seed", score=seed_test.score, n=len(seed_test.results)))
        except BudgetExceeded as exc:
            # the budget ran out: that is why the run stops short, whatever ended the search before
            # (e.g. no new candidate, then a final tuning the budget cut off)
            stopped = str(exc)
            log(BudgetWarning(message=f"test evaluation incomplete: {exc}"))
    snap_end = meter.snapshot()

    entries = outcome.archive.entries if outcome else [best_entry]
    objective = cfg.objective
    front = [e.summary() | {"objective": objective(e)} for e in (outcome.archive.pareto_front(objective) if outcome else entries)]
    for e in entries:
        run_dir.save_workflow(e.id, e.workflow)
    phases = {"seed": _phase(snap0, snap_seed), "search": _phase(snap_seed, snap_search),
              "test": _phase(snap_search, snap_end)}
    result = OptimizationResult(
        best=best_entry.workflow, best_id=best_entry.id,
        val_score=best_entry.val_score if (outcome is not None or seed_val is not None) else None,
        seed_val_score=seed_val.score if seed_val else None, test=test_res, seed_test=seed_test, front=front,
        candidates=[e.summary() for e in entries], usage=meter.to_dict(), phases=phases, stopped=stopped,
        run_dir=str(run_dir.path), resumed=resumed, replayed_events=raw_log.replayed,
        wall_s=time.perf_counter() - start,
    )
    result.summary = _summary(result, task, cfg, budget, task_lm, optimizer_lm, outcome)
    # every session's wall time, a killed one's up to its last event (sessions.json), and this one's
    result.summary["wall_s_all_sessions"] = round(run_dir.elapsed_before() + result.wall_s, 2)
    run_dir.write_json("summary.json", result.summary)
    log(RunFinished(best=best_entry.id, val_score=best_entry.val_score, test_score=result.test_score,
                    stopped=stopped))
    return result


async def _search(task: TaskData, seed: Workflow, seed_val: BatchResult, train: list, val: list,
                  cfg: OptimizeConfig, optimizer_lm: LMClient, tools: ToolRegistry,
                  evaluator_for: Callable[[Budget | None], Evaluator], plan: BudgetPlan,
                  log: Callable[[Any], None], meter: Any, run_dir: RunDir) -> tuple[SearchResult | None, str | None]:
    evaluated: dict[str, Workflow] = {}

    def on_event(event: Event) -> None:
        # candidates are saved as they are judged, so an interrupted run keeps its best so far
        log(event)
        if isinstance(event, CandidateEvaluated):
            evaluated[event.id] = Workflow.model_validate(event.workflow)
            run_dir.save_workflow(event.id, evaluated[event.id])
        elif isinstance(event, CandidateAccepted) and event.id in evaluated:
            run_dir.save_best(evaluated[event.id])

    racing = cfg.racing.rule(chunk=max(1, cfg.concurrency))
    ctx = operator_context(task, tools)
    grad_ctx = GradContext(task_description=task.description, output_field=task.output_field,
                           target_fields=task.target_fields)
    sampler = MinibatchSampler(train, cfg.inner.minibatch_size, cfg.inner.seed) if train else None
    demo_pool: list = []  # training examples solved by any workflow the run tunes: demos for all of them
    # the optimizer's calls (losses, backward) never run wider than the run's own --concurrency
    inner_cfg = replace(cfg.inner, concurrency=max(1, min(cfg.inner.concurrency, cfg.concurrency)))

    async def tune(entry: ArchiveEntry, b: Budget, label: str, steps: int | None = None) -> Tuned:
        candidate = label.strip("[] ") or None

        def emit(e: Event) -> None:
            data = e.to_dict()
            data["candidate"] = candidate
            log(data)

        step_cfg = inner_cfg if steps is None else replace(inner_cfg, steps=steps)
        inner = InnerLoop(evaluator_for(b), optimizer_lm.with_budget(b), grad_ctx, step_cfg, meter=meter,
                          on_event=emit, tool_options=sorted(ctx.tools), racing=racing, plan=plan)
        res = await inner.optimize(entry.workflow, train, val, label, val_result=entry.val, sampler=sampler,
                                   demo_pool=demo_pool)
        return Tuned(res.workflow, res.val, len(res.steps), res.initial_val_score, dict(res.blame),
                     [f.brief() for f in res.failures], res.races, res.stopped)

    search: StructureSearch
    if cfg.method == "aflow":
        search = aflow_search(evaluator_for=evaluator_for, optimizer=optimizer_lm, ctx=ctx,
                              task_description=task.description, config=cfg.aflow, racing=racing, plan=plan,
                              on_event=on_event, targets=tuple(task.target_fields))
    else:
        outer = cfg.outer if cfg.method == "flowbot" else OuterConfig(**{**asdict(cfg.outer), "rounds": 0})
        search = flowbot_search(evaluator_for=evaluator_for, optimizer=optimizer_lm, ctx=ctx,
                                task_description=task.description, config=outer, racing=racing, plan=plan,
                                tuner=tune, objective=cfg.objective, on_event=on_event,
                                targets=tuple(task.target_fields))
    try:
        res = await search.search(seed, seed_val, val)
    except BudgetExceeded as exc:
        return None, str(exc)
    return res, res.stopped


def _summary(result: OptimizationResult, task: TaskData, cfg: OptimizeConfig, budget: Budget,
             task_lm: LMClient, optimizer_lm: LMClient, outcome: SearchResult | None) -> dict[str, Any]:
    def batch(b: BatchResult | None) -> dict[str, Any] | None:
        if b is None:
            return None
        return {"score": b.score, "stderr": b.stderr(), "n": len(b.results), "calls": b.calls,
                "tokens_per_example": b.tokens_per_example(), "cost_per_example": b.cost_per_example()}

    paired = None
    if result.test is not None and result.seed_test is not None:
        paired = paired_difference(result.test.scores(), result.seed_test.scores())
    return {
        "task": task.name,
        "method": cfg.method,
        "task_model": task_lm.model,
        "optimizer_model": optimizer_lm.model,
        "objective": asdict(cfg.objective),
        "best": {"id": result.best_id, "val_score": result.val_score, "path": "best.json"},
        "seed": {"val_score": result.seed_val_score},
        "test": batch(result.test),
        "seed_test": batch(result.seed_test),
        "test_gain_vs_seed": paired,
        "proposals": outcome.proposals.to_dict() if outcome else None,
        "racing": outcome.racing.to_dict() if outcome else None,
        "front": result.front,
        "candidates": result.candidates,
        "usage_by_role": result.usage,
        "usage_by_phase": result.phases,
        "budget": {"limits": budget.limits.describe(), "spent": budget.state(), "scope": cfg.budget.scope,
                   "counts": "calls, tokens and dollars of every role (task, optimizer, judge) together"
                   + ("; the test evaluation is outside the cap" if cfg.budget.scope == "search" else "")},
        "stopped": result.stopped,
        "resumed": result.resumed,
        "replayed_events": result.replayed_events,
        "wall_s": round(result.wall_s, 2),
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
    }
