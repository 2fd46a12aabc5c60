"""The Python API: load, evaluate, estimate and optimize — the same semantics as the CLI.

    >>> import flowbot
    >>> task = flowbot.Task("add", data=[{"q": f"{i}+1", "a": str(i + 1)} for i in range(20)],
    ...                     inputs=["q"], targets=["a"], metric="numeric")
    >>> task.sizes()
    {'train': 12, 'val': 4, 'test': 4}

Complete examples: ``docs/own-task.md`` (bring your own task) and the README.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from flowbot.errors import FlowBotError
from flowbot.graph.io import load_workflow
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import Provider
from flowbot.lm.budget import Budget, UsageMeter
from flowbot.lm.cache import ResponseCache
from flowbot.lm.pricing import per_token_prices, require_prices
from flowbot.lm.resolve import default_model
from flowbot.optim import defaults as D
from flowbot.optim.aflow import AFlowConfig
from flowbot.optim.archive import Objective
from flowbot.optim.driver import (BudgetConfig, OptimizationResult, OptimizeConfig, RacingConfig, TaskData,
                                  operator_context, run_optimization, uncached_items)
from flowbot.optim.events import RunStarted, read_event
from flowbot.optim.estimate import Estimate, estimate_run
from flowbot.optim.inner import InnerConfig
from flowbot.optim.outer import OuterConfig
from flowbot.optim.rundir import RunDir
from flowbot.runtime.backends import make_backend
from flowbot.runtime.batch import Backend, BatchResult, evaluate_examples, use_backend
from flowbot.runtime.executor import Executor
from flowbot.runtime.models import ModelPool, default_cache_path
from flowbot.runtime.runnable import RunnableWorkflow, default_tools
from flowbot.runtime.sync import run_sync
from flowbot.tasks.benchmarks import BENCHMARKS, load_benchmark
from flowbot.tasks.judge import LLMJudge
from flowbot.tasks.seeds import parse_kind, self_consistency, task_baseline
from flowbot.tasks.task import Task
from flowbot.version import __version__


# -- loading -------------------------------------------------------------------------------------
def load(path: str | Path, *, model: str | None = None, base_url: str | None = None) -> RunnableWorkflow:
    """Load a saved workflow, optionally bound to a model.

    >>> wf = load("best.json", model="gpt-4o-mini")            # doctest: +SKIP
    >>> wf(question="How many legs do 3 spiders have?")         # doctest: +SKIP
    {'answer': '24'}
    """
    return RunnableWorkflow.load(path, model=model, base_url=base_url)


def get_task(spec: Task | str, data_dir: str | Path | None = None) -> Task:
    """A Task object, a benchmark name, or a task file (YAML/TOML)."""
    if isinstance(spec, Task):
        return spec
    if str(spec).lower().endswith((".yaml", ".yml", ".toml")):
        return Task.from_file(spec)
    return load_benchmark(str(spec), data_dir)


def resolve_seed(seed: Any, task: Task) -> Workflow:
    """A workflow object, a baseline name (io/cot/sc/react, or sc<k> for k samples), or a workflow file."""
    if isinstance(seed, Workflow):
        return seed
    if seed is None:
        seed = D.SEED_WORKFLOW
    kind = parse_kind(seed) if isinstance(seed, str) else None
    if kind is not None and kind[1] is not None:
        return self_consistency(task_baseline(task, "cot"), kind[1])
    if kind is not None:
        return task_baseline(task, seed)
    return load_workflow(seed, known_tools=default_tools().signatures())


def _check_fields(workflow: Workflow, task: Task) -> None:
    missing = [f for f in workflow.sketch.inputs if f not in task.inputs]
    if missing:
        raise FlowBotError(f"the workflow reads {', '.join(missing)}, which task {task.name!r} does not provide "
                         f"(its inputs: {', '.join(task.inputs)})")
    if task.output not in workflow.sketch.outputs:
        raise FlowBotError(f"the workflow writes {', '.join(workflow.sketch.outputs)} but task {task.name!r} "
                         f"scores the field {task.output!r}")


def _budget(budget: Any) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, (int, float)):
        return Budget(max_usd=float(budget))
    if isinstance(budget, dict):
        names = {"calls": "max_calls", "tokens": "max_tokens", "usd": "max_usd", "dollars": "max_usd",
                 "seconds": "max_seconds"}
        kw = {names.get(k, k): v for k, v in budget.items()}
        unknown = set(kw) - {"max_calls", "max_tokens", "max_usd", "max_seconds"}
        if unknown:
            raise FlowBotError(f"unknown budget {', '.join(sorted(unknown))}; use calls, tokens, usd or seconds")
        for key, value in kw.items():
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise FlowBotError(f"must be a positive number, got {value!r}", where=f"budget {key[4:]}")
        return Budget(**kw)
    raise TypeError("budget must be a Budget, a dict like {'calls': 300, 'usd': 2}, or dollars")


def _bind_judge(metric: Any, pool: ModelPool, judge_model: str | None) -> Any:
    if isinstance(metric, LLMJudge) and not metric.bound:
        return metric.bind(pool.client(judge_model or metric.model, role="judge"))
    return metric


# -- evaluation ----------------------------------------------------------------------------------
@dataclass
class EvalResult:
    workflow: str
    task: str
    split: str
    model: str
    score: float
    stderr: float
    n: int
    calls: int
    tokens: int
    cost_usd: float | None
    wall_s: float
    usage: dict[str, dict[str, Any]]
    batch: BatchResult = field(repr=False)

    @property
    def predictions(self) -> list[dict[str, Any]]:
        return [r.prediction for r in self.batch.results]

    @property
    def warnings(self) -> list[str]:
        """What looks wrong with the result (e.g. one output, never right, on most examples)."""
        stuck = self.batch.stuck_output()
        return [stuck] if stuck else []

    def to_dict(self, traces: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "batch"}
        d["warnings"] = self.warnings
        d["examples"] = [r.to_dict(with_trace=traces) for r in self.batch.results]
        d["stopped"] = self.batch.stopped
        return d


async def aevaluate(
    workflow: Any,
    task: Task | str,
    *,
    split: str = "test",
    limit: int | None = None,
    model: str | None = None,
    base_url: str | None = None,
    judge_model: str | None = None,
    concurrency: int = D.CONCURRENCY,
    progress: bool = False,
    budget: Any = None,
    data_dir: str | Path | None = None,
    cache: str | Path | ResponseCache | None | bool = True,
    providers: dict[str, Provider] | None = None,
    seed: int = 0,
    backend: str | Backend | None = None,
    prices: dict[str, Any] | None = None,
) -> EvalResult:
    """Async :func:`evaluate`."""
    task = get_task(task, data_dir)
    wf = resolve_seed(workflow, task)
    _check_fields(wf, task)
    budget_obj = _budget(budget)
    cache_obj = _cache(cache)
    pool = ModelPool(model, base_url=base_url, cache=cache_obj, meter=UsageMeter(), budget=budget_obj,
                     providers=providers, seed=seed, prices=per_token_prices(prices))
    if budget_obj.limits.max_usd is not None:  # a dollar cap needs every model's price
        roles = {"task": (pool.default, pool.provider().price_per_token())} | _node_models(wf, pool)
        if isinstance(task.metric, LLMJudge) and not task.metric.bound:
            name = judge_model or task.metric.model or pool.default
            roles["judge"] = (name, pool.provider(name).price_per_token())
        require_prices(budget_obj.limits.max_usd, roles)
    metric = _bind_judge(task.metric, pool, judge_model)
    if limit is not None and limit < 1:
        raise FlowBotError(f"must be at least 1, got {limit}", where="limit")
    examples = task.examples(split, limit)
    if not examples:
        raise FlowBotError(f"task {task.name}: the {split} split has no examples (sizes: "
                           + ", ".join(f"{k} {v}" for k, v in task.sizes().items()) + ")")
    executor = Executor(pool.client(), tools=default_tools(), models=pool.resolver())
    start = time.perf_counter()
    batch = await evaluate_examples(executor, wf, examples, metric, concurrency=concurrency, progress=progress,
                                    description=f"{task.name}/{split} {wf.name}", backend=make_backend(backend))
    return EvalResult(
        workflow=wf.name, task=task.name, split=split, model=pool.client().model, score=batch.score,
        stderr=batch.stderr(), n=len(batch.results), calls=batch.calls, tokens=batch.usage.total_tokens,
        cost_usd=batch.usage.cost_usd, wall_s=time.perf_counter() - start, usage=pool.meter.to_dict(),
        batch=batch,
    )


def evaluate(workflow: Any, task: Task | str, **kwargs: Any) -> EvalResult:
    """Score a workflow on a task split.

    >>> result = flowbot.evaluate("cot", "gsm8k", split="test", limit=20)   # doctest: +SKIP
    >>> result.score, result.calls, result.cost_usd                         # doctest: +SKIP

    ``workflow``: a Workflow, a baseline name (io, cot, sc, react) or a workflow file.
    ``cache``: a cache file (e.g. a run's ``cache.sqlite``: re-scoring its workflows pays nothing
    already paid), a ResponseCache, True (the user cache) or False. ``backend``: ``"asyncio"``
    (default) or ``"ray"`` (or a RayBackend). ``prices``: ``{"model": (in, out)}`` dollars per
    million tokens, needed for a dollar budget on a model without a known price.
    Returns an :class:`EvalResult` (score, per-example predictions and traces, usage, cost, and
    ``warnings``: e.g. one output, scored 0 each time, on most examples).
    Works inside a running event loop (Jupyter) too; there, ``await aevaluate(...)`` also does.
    """
    return run_sync(aevaluate(workflow, task, **kwargs))


def _node_models(workflow: Workflow, pool: ModelPool) -> dict[str, tuple[str, Any]]:
    """Nodes that name their own model, with its price (for the dollar-budget check)."""
    return {f"node {node_id}": (p.model, pool.provider(p.model).price_per_token())
            for node_id, p in workflow.params.items() if p.model and p.model != pool.default}


def _cache(cache: str | Path | ResponseCache | None | bool) -> ResponseCache | None:
    if cache is False or cache is None:
        return None
    if isinstance(cache, ResponseCache):
        return cache
    if cache is True:
        path = default_cache_path()
        return ResponseCache(path) if path else None
    return ResponseCache(cache)


# -- optimization --------------------------------------------------------------------------------
def _make_config(method: str, objective: str, cost_weight: float, inner: Any, outer: Any, aflow: Any,
                 racing: Any = None, budget_plan: Any = None, **sizes: Any) -> OptimizeConfig:
    def build(kind: type, value: Any) -> Any:
        if value is None:
            return kind()
        if isinstance(value, kind):
            return value
        return kind(**value)

    if method not in ("flowbot", "inner-only", "aflow"):
        raise FlowBotError(f"unknown method {method!r}; use flowbot, inner-only or aflow")
    if objective not in ("score", "cost"):
        raise FlowBotError(f"unknown objective {objective!r}; use 'score' or 'cost'")
    plan = build(BudgetConfig, budget_plan)
    if plan.scope not in ("all", "search"):
        raise FlowBotError(f"unknown budget scope {plan.scope!r}; use 'all' or 'search'")
    try:
        outer_cfg, race_cfg = build(OuterConfig, outer), build(RacingConfig, racing)
        inner_cfg, aflow_cfg = build(InnerConfig, inner), build(AFlowConfig, aflow)
        cfg = OptimizeConfig(method=method, inner=inner_cfg, outer=outer_cfg, aflow=aflow_cfg, racing=race_cfg,
                             budget=plan, objective=Objective(objective, cost_weight), **sizes)
    except TypeError as exc:  # an unknown setting name
        raise FlowBotError(str(exc).replace("__init__() ", "")) from None
    if outer_cfg.proposal not in ("llm", "fixed"):
        raise FlowBotError(f"unknown proposal policy {outer_cfg.proposal!r}; use 'llm' or 'fixed'")
    if outer_cfg.schedule not in ("tune-first", "alternate"):
        raise FlowBotError(f"unknown schedule {outer_cfg.schedule!r}; use 'tune-first' or 'alternate'")
    if inner_cfg.demo_teacher not in ("task", "optimizer"):
        raise FlowBotError(f"unknown demo teacher {inner_cfg.demo_teacher!r}; use 'task' or 'optimizer'",
                           where="inner.demo_teacher")
    margin, alpha = race_cfg.margin, race_cfg.alpha
    if not isinstance(margin, int) or isinstance(margin, bool) or margin < 1:
        raise FlowBotError(f"must be a whole number of at least 1, got {margin!r}", where="racing.margin")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= 1:
        raise FlowBotError(f"must be more than 0 and at most 1, got {alpha!r}", where="racing.alpha")
    _check_settings(cfg, cost_weight)
    return cfg


#: (setting, smallest allowed value) of the optimizer settings a user passes
_MINIMA = (("inner.steps", 0), ("inner.minibatch_size", 1), ("inner.candidates", 1), ("inner.demos", 0),
           ("inner.demo_sets", 1), ("inner.demo_bootstrap", 0),
           ("inner.patience", 0), ("outer.rounds", 0), ("outer.patience", 0), ("aflow.rounds", 0),
           ("train_size", 1), ("val_size", 1), ("test_size", 1), ("concurrency", 1))


def _check_settings(cfg: OptimizeConfig, cost_weight: float) -> None:
    """Out-of-range or misspelt settings fail here, before anything runs, naming the setting."""
    for name, low in _MINIMA:
        value: Any = cfg
        for part in name.split("."):
            value = getattr(value, part, None)
        if value is None:
            continue  # unset (e.g. all of a split) or a setting this version does not have
        if name == "test_size" and not cfg.evaluate_test:
            low = 0  # no test evaluation: a test split of 0 items says the same
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FlowBotError(f"must be a whole number of at least {low}, got {value!r}", where=name)
    feedback = getattr(cfg.inner, "feedback", "backward")
    if feedback not in ("backward", "global"):
        raise FlowBotError(f"unknown value {feedback!r}; use backward or global", where="inner.feedback")
    step = getattr(cfg.inner, "step", "rule")
    if step not in ("rule", "rewrite"):
        raise FlowBotError(f"unknown value {step!r}; use rule or rewrite", where="inner.step")
    if not (isinstance(cost_weight, (int, float)) and cost_weight >= 0):
        raise FlowBotError(f"must be a number of at least 0, got {cost_weight!r}", where="cost_weight")


def _check_splits(task: Task, cfg: OptimizeConfig) -> None:
    """The splits the method needs must have examples (said before a run directory exists)."""
    sizes = task.sizes()
    needed = ["val"] + ([] if cfg.method == "aflow" else ["train"])
    empty = [s for s in needed if sizes.get(s, 0) == 0]
    if empty:
        names = {"val": "validation", "train": "training"}
        raise FlowBotError(f"task {task.name}: the {' and '.join(names[s] for s in empty)} split is empty "
                           f"(sizes: {', '.join(f'{k} {v}' for k, v in sizes.items())}); give more data, or "
                           "val=/train= files")


def default_run_dir(task: Task, method: str, config: dict[str, Any]) -> Path:
    """``runs/<task>-<method>-<hash of the settings>``: the same command resumes the same run."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / f"{task.name}-{method}-{digest}"


def resolved_models(model: str | None, optimizer_model: str | None, base_url: str | None,
                    optimizer_base_url: str | None) -> dict[str, Any]:
    """The model names (and servers) a run will use, as resolved now: the same command with and
    without a provider key in the environment is a different run."""
    task_model = model or default_model()
    if not base_url and os.environ.get("FLOWBOT_BASE_URL") and task_model == os.environ.get("FLOWBOT_MODEL"):
        base_url = os.environ["FLOWBOT_BASE_URL"]  # make_provider serves the environment's default model there
    return {"model": task_model, "optimizer_model": optimizer_model or task_model, "base_url": base_url,
            "optimizer_base_url": optimizer_base_url}


def _same_model(recorded: Any, name: str) -> bool:
    """A model name recorded by a run (the provider's, e.g. ``local/qwen2.5-coder-1.5b``) is ``name``."""
    def norm(x: str) -> str:
        x = x.replace("local:", "local/", 1)
        return x.split("/", 1)[1] if x.startswith("local/") else x
    return isinstance(recorded, str) and norm(recorded) == norm(name)


def _legacy_settings(settings: dict[str, Any], model: str | None, optimizer_model: str | None,
                     base_url: str | None) -> dict[str, Any] | None:
    """The settings as FlowBot wrote them before model names were resolved ("(default)"), or None
    when they would be the same."""
    legacy = dict(settings)
    if model is None:
        legacy["model"], legacy["base_url"] = "(default)", base_url
    if optimizer_model is None:
        legacy["optimizer_model"] = "(same as model)"
    return None if legacy == settings else legacy


def _is_legacy_run(path: Path, legacy: dict[str, Any], settings: dict[str, Any]) -> bool:
    """``path`` holds a run started with the ``legacy`` settings on the models resolved now."""
    try:
        saved = json.loads((path / "config.json").read_text(encoding="utf-8"))["config"]
        first = json.loads((path / "events.jsonl").read_text(encoding="utf-8").split("\n", 1)[0])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if saved.get("model") != legacy["model"] or saved.get("optimizer_model") != legacy["optimizer_model"]:
        return False
    started = read_event(first).event if isinstance(first, dict) else None
    return isinstance(started, RunStarted) and _same_model(started.task_model, settings["model"]) and \
        _same_model(started.optimizer_model, settings["optimizer_model"])


def run_config(*, method: str = D.METHOD, objective: str = D.OBJECTIVE, cost_weight: float = D.COST_WEIGHT,
               inner: Any = None, outer: Any = None, aflow: Any = None, racing: Any = None,
               budget_scope: str = D.BUDGET_SCOPE, budget_shares: dict[str, float] | None = None,
               train_size: int | None = D.TRAIN_SIZE, val_size: int | None = D.VAL_SIZE, test_size: int | None = None,
               concurrency: int = D.CONCURRENCY, random_seed: int = D.RANDOM_SEED, progress: bool = False,
               evaluate_test: bool = True) -> OptimizeConfig:
    """The optimizer settings :func:`prepare_run` makes of these arguments (checked as it checks
    them); ``flowbot runs`` uses it to see whether a run's resume command still matches the run."""
    return _make_config(method, objective, cost_weight, inner, outer, aflow, racing,
                        {"scope": budget_scope, **(budget_shares or {})}, train_size=train_size, val_size=val_size,
                        test_size=test_size, concurrency=concurrency, seed=random_seed, progress=progress,
                        evaluate_test=evaluate_test)


def prepare_run(task: Task | str, *, seed: Any = D.SEED_WORKFLOW, model: str | None = None,
                optimizer_model: str | None = None, base_url: str | None = None,
                optimizer_base_url: str | None = None, budget: Any = None, objective: str = D.OBJECTIVE,
                cost_weight: float = D.COST_WEIGHT, method: str = D.METHOD, run_dir: str | Path | None = None,
                inner: Any = None, outer: Any = None, aflow: Any = None, racing: Any = None,
                budget_scope: str = D.BUDGET_SCOPE, budget_shares: dict[str, float] | None = None,
                train_size: int | None = D.TRAIN_SIZE,
                val_size: int | None = D.VAL_SIZE, test_size: int | None = None, concurrency: int = D.CONCURRENCY,
                random_seed: int = D.RANDOM_SEED, data_dir: str | Path | None = None, progress: bool = False,
                evaluate_test: bool = True, providers: dict[str, Provider] | None = None,
                prices: dict[str, Any] | None = None, backend: str | Backend | None = None,
                mlflow: bool | str | None = None) -> "PreparedRun":
    task = get_task(task, data_dir)
    seed_wf = resolve_seed(seed, task)
    _check_fields(seed_wf, task)
    cfg = run_config(method=method, objective=objective, cost_weight=cost_weight, inner=inner, outer=outer,
                     aflow=aflow, racing=racing, budget_scope=budget_scope, budget_shares=budget_shares,
                     train_size=train_size, val_size=val_size, test_size=test_size, concurrency=concurrency,
                     random_seed=random_seed, progress=progress, evaluate_test=evaluate_test)
    budget_obj = _budget(budget)
    price_table = per_token_prices(prices)
    _check_splits(task, cfg)
    settings = {
        "task": task.name, "task_sizes": task.sizes(), "seed_workflow": json.loads(seed_wf.model_dump_json()),
        **resolved_models(model, optimizer_model, base_url, optimizer_base_url), "method": method,
        "optimize": json.loads(json.dumps(cfg.to_dict(), default=str)),
    }
    if price_table:  # prices change every cost in the log: part of the run's identity
        settings["prices_per_million"] = {m: [round(v / 1e-6, 9) for v in p] for m, p in sorted(price_table.items())}
    path = Path(run_dir) if run_dir else default_run_dir(task, method, settings)
    legacy = _legacy_settings(settings, model, optimizer_model, base_url)
    if legacy is not None:  # a run started before names were resolved resumes as the same run
        legacy_path = Path(run_dir) if run_dir else default_run_dir(task, method, legacy)
        if (run_dir or not path.exists()) and _is_legacy_run(legacy_path, legacy, settings):
            path, settings = legacy_path, legacy
    return PreparedRun(task, seed_wf, cfg, budget_obj, path, settings | {"budget": budget_obj.limits.describe()},
                       model, optimizer_model, base_url, optimizer_base_url, providers, price_table,
                       make_backend(backend), mlflow)


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None when ``path`` exists)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


@dataclass
class PreparedRun:
    task: Task
    seed: Workflow
    config: OptimizeConfig
    budget: Budget
    run_dir: Path
    settings: dict[str, Any]
    model: str | None
    optimizer_model: str | None
    base_url: str | None
    optimizer_base_url: str | None
    providers: dict[str, Provider] | None
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    backend: Backend | None = None
    mlflow: bool | str | None = None

    def estimate(self) -> Estimate:
        return run_sync(self.aestimate())

    async def aestimate(self) -> Estimate:
        """The projection before anything is paid: how many candidates the budget affords and
        whether it affords none (a refusal) come from the run's own budget plan, with the seed's
        answers the run's cache already holds counted as free, as the run will count them."""
        pools = self._pools(cache=None, run_id=None)
        self._check_prices(pools)
        return estimate_run(self.task, self.seed, self.config, self.budget,
                            task_price=pools[0].provider().price_per_token(),
                            optimizer_price=pools[1].provider().price_per_token(),
                            uncached=await self._uncached_seed_items(),
                            operators=operator_context(self._task_data(self.task.metric), default_tools()))

    async def _uncached_seed_items(self) -> dict[str, int] | None:
        """How many of the seed's validation and test items the run's cache does not answer (the
        driver's own probe: cache only, nothing paid or loaded); None when the run has no cache."""
        path = Path(self.run_dir) / "cache.sqlite"
        if not path.exists():
            return None
        cache = ResponseCache(path)
        try:
            task_pool, _ = self._pools(cache, run_id=None)
            executor = Executor(task_pool.client(), tools=default_tools(), models=task_pool.resolver())
            cfg = self.config
            val = self.task.examples("val", cfg.val_size)
            test = self.task.examples("test", cfg.test_size) if cfg.evaluate_test else []
            return {"val": await uncached_items(executor, self.seed, val),
                    "test": await uncached_items(executor, self.seed, test)}
        finally:
            cache.close()

    def _task_data(self, metric: Any) -> TaskData:
        task = self.task
        return TaskData(name=task.name, description=task.description or task.describe(),
                        output_field=task.output, target_fields=task.targets, metric=metric,
                        train=task.examples("train"), val=task.examples("val"), test=task.examples("test"),
                        tools=getattr(task, "tools", None), context_fields=list(getattr(task, "context_fields", ())))

    def _check_prices(self, pools: tuple[ModelPool, ModelPool] | None = None) -> None:
        """Refuse a dollar budget over any model whose price is unknown (it would count $0)."""
        if self.budget.limits.max_usd is None:
            return
        task_pool, opt_pool = pools or self._pools(cache=None, run_id=None)
        roles = {"task": (task_pool.default, task_pool.provider().price_per_token()),
                 "optimizer": (opt_pool.default, opt_pool.provider().price_per_token())}
        roles |= _node_models(self.seed, task_pool)
        metric = self.task.metric
        if isinstance(metric, LLMJudge) and not metric.bound:
            name = metric.model or opt_pool.default
            roles["judge"] = (name, opt_pool.provider(name).price_per_token())
        require_prices(self.budget.limits.max_usd, roles)

    def _pools(self, cache: ResponseCache | None, run_id: str | None) -> tuple[ModelPool, ModelPool]:
        meter = UsageMeter()
        task_pool = ModelPool(self.model, base_url=self.base_url, cache=cache, meter=meter, budget=self.budget,
                              run_id=run_id, seed=self.config.seed, providers=self.providers, prices=self.prices)
        opt_name = self.optimizer_model or task_pool.default
        opt_base = self.optimizer_base_url if self.optimizer_model else (self.optimizer_base_url or self.base_url)
        if opt_name == task_pool.default and opt_base == self.base_url:
            return task_pool, task_pool  # one provider (and one loaded local model) for both roles
        opt_pool = ModelPool(opt_name, base_url=opt_base, cache=cache, meter=meter, budget=self.budget,
                             run_id=run_id, seed=self.config.seed, providers=self.providers, prices=self.prices)
        return task_pool, opt_pool

    async def arun(self, callbacks: Iterable[Callable[[dict[str, Any]], None]] = (), *,
                   command: str | None = None) -> OptimizationResult:
        """Run (or resume) the optimization. ``command`` is recorded in config.json as the way to
        resume it (``flowbot runs`` shows it)."""
        self._check_prices()
        if not (Path(self.run_dir) / "config.json").exists():  # a new run: refused before anything is paid
            refusal = (await self.aestimate()).refusal
            if refusal is not None:
                raise FlowBotError(refusal)
        created = _first_missing(self.run_dir)  # what to remove if this session leaves nothing worth keeping
        rd = RunDir(self.run_dir)  # locked for this process until closed
        cache: ResponseCache | None = None
        meter: UsageMeter | None = None
        tracking: Any = None
        status = "FAILED"
        try:
            run_id, resumed = rd.start(self.settings)
            rd.clear_stop()
            if resumed:
                self.budget.resume_time(rd.elapsed_before())
            _record_command(rd, command)
            cache = ResponseCache(rd.cache_path)
            task_pool, opt_pool = self._pools(cache, run_id)
            meter = task_pool.meter
            tracking = _open_mlflow(self.mlflow, rd, self.settings, resumed)
            callbacks = [*callbacks, *([tracking.on_event] if tracking else [])]
            for cb in callbacks:
                rd.events.listeners.append(lambda event, replayed, cb=cb: cb({**event, "replayed": replayed}))
            data = self._task_data(_bind_judge(self.task.metric, opt_pool, None))
            with use_backend(self.backend), (tracking.tracing() if tracking else contextlib.nullcontext()):
                result = await run_optimization(
                    data, self.seed, task_pool.client(), opt_pool.client(role="optimizer"), tools=default_tools(),
                    config=self.config, run_dir=rd, budget=self.budget, resumed=resumed,
                    models=task_pool.resolver())
            _record_outcome(rd, result, run_id)
            status = "FINISHED"
            return result
        except BaseException as exc:
            status = "FAILED" if isinstance(exc, Exception) else "KILLED"
            if isinstance(exc, Exception):
                if cache is not None:
                    cache.close()
                    cache = None
                rd.close()
                # A session that made the directory leaves no partial run behind when it paid for
                # nothing, or when bad input (a broken metric, say) stopped it before its first result.
                nothing_paid = meter is None or meter.total().calls == 0
                if created is not None and (nothing_paid or (isinstance(exc, FlowBotError) and rd.events.seq <= 1)):
                    shutil.rmtree(created, ignore_errors=True)
            raise
        finally:
            if cache is not None:
                cache.close()
            rd.close()
            if tracking:
                tracking.finish(status)


def _open_mlflow(setting: bool | str | None, rd: RunDir, settings: dict[str, Any], resumed: bool) -> Any:
    """The MLflow logger of this run, or None (see :mod:`flowbot.integrations.mlflow`)."""
    from flowbot.integrations.mlflow import mlflow_enabled

    if not mlflow_enabled(setting):
        return None
    from flowbot.integrations.mlflow import MlflowRun

    return MlflowRun.open(rd.path, settings, tracking_uri=setting if isinstance(setting, str) else None,
                          resumed=resumed)


def _record_command(rd: RunDir, command: str | None) -> None:
    if command is None:
        return
    config = rd.read_json("config.json") or {}
    config["command"], config["cwd"] = command, os.getcwd()
    rd.write_json("config.json", config)


def _record_outcome(rd: RunDir, result: OptimizationResult, run_id: str) -> None:
    """What a saved best workflow says about itself, and the test split example by example."""
    summary = result.summary or {}
    tuned = {"task": summary.get("task"), "task_model": summary.get("task_model"),
             "optimizer_model": summary.get("optimizer_model"), "method": summary.get("method"),
             "candidate": result.best_id, "val_score": result.val_score, "seed_val_score": result.seed_val_score,
             "test_score": result.test_score,
             "seed_test_score": result.seed_test.score if result.seed_test is not None else None,
             "test_n": len(result.test.results) if result.test is not None else 0,
             "run_id": run_id, "run_dir": str(rd.path), "flowbot_version": __version__}
    result.best = result.best.model_copy(update={"meta": {**result.best.meta, "tuned": tuned}})
    rd.save_best(result.best)
    if result.summary:
        result.summary["flowbot_version"] = __version__
        rd.write_json("summary.json", result.summary)
    if result.test is None:
        return
    seed = {r.example_id: r for r in (result.seed_test.results if result.seed_test is not None else [])}
    path = rd.path / TEST_EXAMPLES
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in result.test.results:
            twin = seed.get(r.example_id)
            row = {"id": r.example_id, "example": r.example, "best": _example_row(r),
                   "seed": _example_row(twin) if twin is not None else None}
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


#: the test split example by example, the best workflow beside the seed (read by the report)
TEST_EXAMPLES = "test_examples.jsonl"


def _example_row(r: Any) -> dict[str, Any]:
    d = r.to_dict(with_trace=True)
    return {k: d.get(k) for k in ("prediction", "score", "feedback", "error", "trace")}


async def aoptimize(task: Task | str, *, seed: Any = D.SEED_WORKFLOW, model: str | None = None,
                    optimizer_model: str | None = None, budget: Any = None, objective: str = D.OBJECTIVE,
                    run_dir: str | Path | None = None, callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
                    **options: Any) -> OptimizationResult:
    """Async :func:`optimize` (``await flowbot.aoptimize(...)`` in a notebook)."""
    prepared = prepare_run(task, seed=seed, model=model, optimizer_model=optimizer_model, budget=budget,
                           objective=objective, run_dir=run_dir, **options)
    result = await prepared.arun(callbacks)
    result.best = RunnableWorkflow.from_ir(result.best)
    return result


def optimize(task: Task | str, *, seed: Any = D.SEED_WORKFLOW, model: str | None = None,
             optimizer_model: str | None = None, budget: Any = None, objective: str = D.OBJECTIVE,
             run_dir: str | Path | None = None,
             callbacks: Iterable[Callable[[dict[str, Any]], None]] = (), **options: Any) -> OptimizationResult:
    """Optimize a workflow for a task; resumable through its run directory.

    >>> result = flowbot.optimize(task, seed="cot", model="gpt-4o-mini",       # doctest: +SKIP
    ...                           budget={"usd": 2}, run_dir="runs/mytask")
    >>> result.best.save("best.json"); result.test_score                      # doctest: +SKIP

    ``seed``: a baseline name (io, cot, sc, react), a workflow file or object. ``budget``: dollars,
    a dict such as ``{"calls": 300, "tokens": 2e6, "usd": 5, "seconds": 3600}`` or a Budget; it caps
    every role (task, optimizer, judge) together, the final test evaluation included
    (``budget_scope="search"``: the cap is the search's alone and the test is paid and reported
    apart). Candidates are judged by paired racing against the incumbent (``racing={"margin": 2,
    "alpha": 0.15}``). ``objective``: ``score`` or ``cost`` (score minus
    ``cost_weight`` × cost per example). ``callbacks`` receive every run event as a dict (wrapped in
    :func:`flowbot.typed_callback`, a function receives it typed, as a ``LoggedEvent``). Other
    options: ``method`` (flowbot, inner-only, aflow), ``inner``/``outer``/``aflow`` settings,
    ``train_size``, ``val_size``, ``test_size``, ``concurrency``, ``random_seed``, ``base_url``,
    ``optimizer_base_url``, ``data_dir``, ``cost_weight``, ``prices`` (``{"model": (in, out)}``
    dollars per million tokens), ``backend`` (``"asyncio"`` or ``"ray"``), ``mlflow`` (True, a
    tracking URI, or False; default: on when ``MLFLOW_TRACKING_URI`` is set and mlflow is installed),
    ``progress``. Works inside a running event loop (Jupyter) too; ``await aoptimize(...)`` also does.
    """
    return run_sync(aoptimize(task, seed=seed, model=model, optimizer_model=optimizer_model, budget=budget,
                              objective=objective, run_dir=run_dir, callbacks=callbacks, **options))


def estimate(task: Task | str, **options: Any) -> Estimate:
    """Projected calls, tokens and dollars of :func:`optimize` with the same arguments, before paying."""
    options.pop("callbacks", None)
    return prepare_run(task, **options).estimate()


def benchmarks() -> dict[str, str]:
    return {name: b.description for name, b in BENCHMARKS.items()}
