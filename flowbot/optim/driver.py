"""The bilevel driver: one optimization run in one run directory, resumable.

``run_optimization`` scores the seed, reserves the projected cost of the final test evaluation,
searches (FlowBot's bilevel loop, the inner loop alone, or the AFlow-style baseline) within the
rest of the budget, then evaluates the best workflow (and the seed, for comparison) on the test
split once. Everything is logged to the run directory; re-running with the same directory replays
the cache and the log and continues where the run stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.lm.budget import Budget, RoleUsage
from flowbot.lm.client import LMClient
from flowbot.optim.aflow import AFlowConfig, AFlowSearch
from flowbot.optim.archive import ArchiveEntry, Objective
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.inner import InnerConfig, InnerLoop, InnerResult
from flowbot.optim.outer import OuterConfig, OuterLoop, OuterResult
from flowbot.optim.rundir import RunDir
from flowbot.optim.textgrad import GradContext
from flowbot.runtime.batch import BatchResult
from flowbot.runtime.executor import Executor
from flowbot.runtime.scoring import Metric
from flowbot.tools.base import ToolRegistry

Method = Literal["flowbot", "inner-only", "aflow"]


@dataclass
class OptimizeConfig:
    method: Method = "flowbot"
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    aflow: AFlowConfig = field(default_factory=AFlowConfig)
    objective: Objective = field(default_factory=Objective)
    train_size: int | None = 40
    val_size: int | None = 20
    test_size: int | None = None
    evaluate_test: bool = True
    compare_seed_on_test: bool = True
    concurrency: int = 4
    seed: int = 0
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


def _sum_roles(snapshot: dict[str, RoleUsage]) -> RoleUsage:
    total = RoleUsage()
    for r in snapshot.values():
        total.calls += r.calls
        total.prompt_tokens += r.prompt_tokens
        total.completion_tokens += r.completion_tokens
        total.cost_usd += r.cost_usd
    return total


def _phase(before: dict[str, RoleUsage], after: dict[str, RoleUsage]) -> dict[str, Any]:
    a, b = _sum_roles(after), _sum_roles(before)
    return {"calls": a.calls - b.calls, "tokens": (a.prompt_tokens + a.completion_tokens) - (b.prompt_tokens + b.completion_tokens),
            "cost_usd": round(a.cost_usd - b.cost_usd, 6)}


def _reserve_for_test(budget: Budget, seed_val: BatchResult, n_test: int, evaluations: int) -> Budget:
    """A child budget for the search: the total minus the projected cost of the test evaluations."""
    n = max(1, len(seed_val.results))
    per_calls = seed_val.calls / n
    per_tokens = seed_val.usage.total_tokens / n
    per_usd = (seed_val.usage.cost_usd or 0.0) / n
    lim, spent = budget.limits, budget.spent
    margin = 1.5 * n_test * evaluations  # later workflows may cost more than the seed
    limits: dict[str, Any] = {}
    if lim.max_calls is not None:
        limits["max_calls"] = max(0, int(lim.max_calls - spent.calls - per_calls * margin))
    if lim.max_tokens is not None:
        limits["max_tokens"] = max(0, int(lim.max_tokens - spent.tokens - per_tokens * margin))
    if lim.max_usd is not None:
        limits["max_usd"] = max(0.0, lim.max_usd - spent.usd - per_usd * margin)
    return budget.child("search", **limits)


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
    train = task.train[: cfg.train_size] if cfg.train_size is not None else task.train
    val = task.val[: cfg.val_size] if cfg.val_size is not None else task.val
    test = task.test[: cfg.test_size] if cfg.test_size is not None else task.test
    if not val:
        raise ValueError(f"task {task.name}: the validation split is empty; the optimizer needs held-out examples")
    if cfg.method != "aflow" and not train:
        raise ValueError(f"task {task.name}: the training split is empty")
    budget.add_stop_condition(run_dir.stop_requested)
    meter = task_lm.meter
    raw_log = run_dir.events

    def log(event: dict[str, Any]) -> None:
        # cumulative usage by role with every event, so reports can plot spend over the run exactly
        raw_log({**event, "usage_total": meter.to_dict()})

    log({"type": "run_started", "method": cfg.method, "task": task.name, "resumed": resumed,
         "sizes": {"train": len(train), "val": len(val), "test": len(test)},
         "budget": budget.limits.describe(), "task_model": task_lm.model, "optimizer_model": optimizer_lm.model})

    snap0 = meter.snapshot()
    evaluator = Evaluator(Executor(task_lm, tools=tools, models=models), task.metric,
                          concurrency=cfg.concurrency, progress=cfg.progress)
    stopped: str | None = None
    outcome: OuterResult | None = None
    seed_val: BatchResult | None = None
    try:
        seed_val = await evaluator(seed, val, "validating the seed")
        log({"type": "seed_evaluated", "val_score": seed_val.score, "calls": seed_val.calls,
             "tokens": seed_val.usage.total_tokens, "cost_usd": seed_val.usage.cost_usd})
    except BudgetExceeded as exc:
        stopped = str(exc)
    snap_seed = meter.snapshot()

    if seed_val is not None:
        n_test_evals = (1 + int(cfg.compare_seed_on_test)) if cfg.evaluate_test else 0
        search_budget = _reserve_for_test(budget, seed_val, len(test), n_test_evals)
        log({"type": "budget_plan", "search": search_budget.limits.describe(),
             "reserved_for_test": f"{len(test)} examples × {n_test_evals} workflow(s)"})
        if search_budget.exhausted:
            log({"type": "budget_warning", "message": "the budget is too small for one round of optimization "
                 "after reserving the test evaluation; the seed is returned"})
        outcome, stopped = await _search(task, seed, train, val, cfg, task_lm, optimizer_lm, tools, models,
                                         evaluator, search_budget, run_dir, log)
    snap_search = meter.snapshot()

    if outcome is not None:
        best_entry = outcome.best
    else:
        best_entry = ArchiveEntry(id="c0", workflow=seed, val_score=seed_val.score if seed_val else 0.0,
                                  cost_per_example=0.0, tokens_per_example=0.0)
    run_dir.save_best(best_entry.workflow)

    test_res = seed_test = None
    if cfg.evaluate_test and test:
        try:
            test_res = await evaluator(best_entry.workflow, test, "testing the best workflow")
            log({"type": "test_evaluated", "id": best_entry.id, "score": test_res.score, "n": len(test_res.results)})
            if cfg.compare_seed_on_test:
                seed_test = await evaluator(seed, test, "testing the seed")
                log({"type": "test_evaluated", "id": "seed", "score": seed_test.score, "n": len(seed_test.results)})
        except BudgetExceeded as exc:
            stopped = stopped or str(exc)
            log({"type": "budget_warning", "message": f"test evaluation incomplete: {exc}"})
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
    result.summary = _summary(result, task, cfg, budget, test, task_lm, optimizer_lm)
    result.summary["wall_s_all_sessions"] = round(run_dir.add_session_time(result.wall_s), 2)
    run_dir.write_json("summary.json", result.summary)
    log({"type": "run_finished", "best": best_entry.id, "val_score": best_entry.val_score,
         "test_score": result.test_score, "stopped": stopped})
    return result


async def _search(task: TaskData, seed: Workflow, train: list, val: list, cfg: OptimizeConfig, task_lm: LMClient,
                  optimizer_lm: LMClient, tools: ToolRegistry, models: Any, evaluator: Evaluator,
                  budget: Budget, run_dir: RunDir, log: Callable[[dict[str, Any]], None]
                  ) -> tuple[OuterResult | None, str | None]:
    best_score = [float("-inf")]

    def on_event(event: dict[str, Any]) -> None:
        log(event)
        if event.get("type") == "candidate_evaluated" and "workflow" in event:
            from flowbot.graph.sketch import Workflow as _W

            wf = _W.model_validate(event["workflow"])
            run_dir.save_workflow(event["id"], wf)
            value = event.get("objective", event["val_score"])
            if value > best_score[0]:
                best_score[0] = value
                run_dir.save_best(wf)

    if cfg.method == "aflow":
        search_eval = evaluator.with_executor(Executor(task_lm.with_budget(budget), tools=tools, models=models))
        aflow = AFlowSearch(search_eval, optimizer_lm.with_budget(budget), task_description=task.description,
                            tools=tools.signatures(), config=cfg.aflow, budget=budget, on_event=on_event)
        try:
            res = await aflow.search(seed, val)
        except BudgetExceeded as exc:
            return None, str(exc)
        return res, res.stopped

    ctx = GradContext(task_description=task.description, output_field=task.output_field,
                      target_fields=task.target_fields)

    async def tune(workflow: Workflow, cand_budget: Budget | None, label: str) -> InnerResult:
        b = cand_budget or budget
        ev = evaluator.with_executor(Executor(task_lm.with_budget(b), tools=tools, models=models))
        candidate = label.strip("[] ") or None
        inner = InnerLoop(ev, optimizer_lm.with_budget(b), ctx, cfg.inner, meter=task_lm.meter,
                          on_event=lambda e: on_event({**e, "candidate": candidate}),
                          tool_options=sorted(tools.names()))
        return await inner.optimize(workflow, train, val, label)

    outer_cfg = cfg.outer
    if cfg.method == "inner-only":
        outer_cfg = OuterConfig(**{**asdict(cfg.outer), "rounds": 0})
    loop = OuterLoop(tune, optimizer_lm.with_budget(budget), task_description=task.description,
                     tools=tools.signatures(), config=outer_cfg, objective=cfg.objective, budget=budget,
                     on_event=on_event)
    try:
        res = await loop.search(seed)
    except BudgetExceeded as exc:
        return None, str(exc)
    return res, res.stopped


def _summary(result: OptimizationResult, task: TaskData, cfg: OptimizeConfig, budget: Budget, test: list,
             task_lm: LMClient, optimizer_lm: LMClient) -> dict[str, Any]:
    def batch(b: BatchResult | None) -> dict[str, Any] | None:
        if b is None:
            return None
        return {"score": b.score, "stderr": b.stderr(), "n": len(b.results), "calls": b.calls,
                "tokens_per_example": b.tokens_per_example(), "cost_per_example": b.cost_per_example()}

    paired = None
    if result.test is not None and result.seed_test is not None:
        paired = _paired_difference(result.test, result.seed_test)
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
        "front": result.front,
        "candidates": result.candidates,
        "usage_by_role": result.usage,
        "usage_by_phase": result.phases,
        "budget": {"limits": budget.limits.describe(), "spent": budget.state(),
                   "counts": "calls, tokens and dollars of every role (task, optimizer, judge) together"},
        "stopped": result.stopped,
        "resumed": result.resumed,
        "replayed_events": result.replayed_events,
        "wall_s": round(result.wall_s, 2),
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
    }


def _paired_difference(a: BatchResult, b: BatchResult) -> dict[str, Any]:
    """Mean per-example difference a − b on shared examples, with a 95% normal-approximation interval."""
    sa, sb = a.scores(), b.scores()
    common = [k for k in sa if k in sb]
    diffs = [sa[k] - sb[k] for k in common]
    n = len(diffs)
    if n == 0:
        return {"n": 0}
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = 1.96 * (var / n) ** 0.5
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half],
            "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
