"""The Ray backend: the examples of an evaluation spread over the workers of a Ray cluster.

    >>> backend = RayBackend()                       # doctest: +SKIP
    >>> await evaluate_examples(executor, wf, examples, metric, backend=backend)   # doctest: +SKIP

Each worker is an actor with its own LM clients (the providers are shipped to it) and its own
tools; it runs whole workflows, so tool nodes (sandboxed Python) use the worker's cores. What the
local path guarantees still holds across workers:

- **one cache**: a cache actor on this machine opens the run's cache file, and every worker reads
  and writes through it, so a response paid once is not paid again, by any worker;
- **one budget**: a budget actor holds a copy of the executor's budget (its limits, what was spent,
  the parents' limits) and every paid call of every worker is checked against it *before* it is
  made; stop conditions (a STOP file, Ctrl-C) are relayed to it while the evaluation runs;
- **one meter**: each example's usage comes back with its trace and is added to the executor's
  meter and budget here, so spend per role is the same as on the local path;
- **the same stops**: a permanent LM error on any worker (bad key, unknown model, an unreachable
  server) comes back to this side, which stops the evaluation and raises it; the metric guard
  (:mod:`flowbot.runtime.metric_guard`) judges the scores here; either way the budget actor is
  told to stop, so the examples still running on workers make no further call.

Scoring (the metric) runs here, on the traces the workers return. Tracing spans are not recorded
for remote runs. Connect to a cluster with ``address`` (or ``RAY_ADDRESS``); without one, a local
Ray is started on first use. The cache actor opens the cache file by path on the node of this
process, so run FlowBot on a node of the cluster (e.g. the head node, or through ``ray job
submit``), not through Ray Client (``ray://``), whose driver runs elsewhere.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flowbot.errors import FlowBotError, MetricFailure
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded, LMPermanentError, Provider, Usage
from flowbot.lm.budget import Budget, RoleUsage, UsageMeter
from flowbot.lm.cache import CacheEntry, ResponseCache
from flowbot.lm.client import LMClient
from flowbot.lm.retry import RetryPolicy
from flowbot.runtime.batch import BatchResult, ExampleResult, collect, progress_bar, score_guarded, workflow_inputs
from flowbot.runtime.executor import Executor
from flowbot.runtime.metric_guard import MetricGuard, metric_name
from flowbot.runtime.trace import Trace
from flowbot.scoring.result import Metric
from flowbot.tools.base import ToolRegistry

MISSING_EXTRA = "the Ray backend needs ray: pip install 'flowbot[ray]'"
WORKER_NAME = "flowbot-worker"
#: how often the stop conditions of the executor's budget (STOP file, time) are relayed to the workers
POLL_S = 0.25


class BackendError(FlowBotError):
    """The Ray backend cannot run this evaluation as configured (the message says why)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(MISSING_EXTRA) from None
    return ray


# -- what runs in the cluster ------------------------------------------------------------------
@dataclass
class WorkerSpec:
    """Everything a worker needs to build the executor's twin: put in the object store once per
    executor and kept by each worker after its first use."""

    providers: dict[str, Provider]
    default: str
    role: str
    default_seed: int | None
    run_id: str | None
    retry: RetryPolicy
    tools: ToolRegistry
    cache: Any  # the cache actor's handle, or None for no cache


class CacheService:
    """Actor: the one response cache of a cluster evaluation (the run's SQLite file)."""

    def __init__(self, path: str) -> None:
        self.cache = ResponseCache(path)

    def get(self, key: str) -> CacheEntry | None:
        return self.cache.get(key)

    def put(self, key: str, model: str, text: str, usage: Usage, origin: str | None) -> None:
        self.cache.put(key, model, text, usage, origin)


class BudgetService:
    """Actor: the budget every worker's calls are checked against, one call at a time."""

    def __init__(self, chain: list[dict[str, Any]]) -> None:
        self.budget = Budget.from_mirror(chain)
        self.stop_reason: str | None = None
        self.budget.add_stop_condition(lambda: self.stop_reason)

    def start_call(self) -> str | None:
        try:
            self.budget.start_call()
        except BudgetExceeded as exc:
            return str(exc)
        return None

    def finish_call(self, usage: Usage) -> None:
        self.budget.finish_call(usage)

    def abort_call(self) -> None:
        self.budget.abort_call()

    def stop(self, reason: str) -> None:
        self.stop_reason = reason


class RemoteCache:
    """In a worker: the ResponseCache interface LMClient uses, served by the cache actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def get(self, key: str) -> CacheEntry | None:
        return import_ray().get(self.handle.get.remote(key))

    def put(self, key: str, model: str, text: str, usage: Usage, origin: str | None = None) -> None:
        import_ray().get(self.handle.put.remote(key, model, text, usage, origin))


class RemoteBudget:
    """In a worker: the Budget interface LMClient uses, checked by the budget actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def start_call(self) -> None:
        reason = import_ray().get(self.handle.start_call.remote())
        if reason:
            raise BudgetExceeded(reason)

    def finish_call(self, usage: Usage) -> None:
        import_ray().get(self.handle.finish_call.remote(usage))

    def abort_call(self) -> None:
        import_ray().get(self.handle.abort_call.remote())


class Worker:
    """Actor: runs one workflow on one input per call (several calls at once, one thread each).

    One set of workers serves every evaluation of a backend; what differs between evaluations
    (models, tools, cache) comes as a :class:`WorkerSpec` by reference."""

    KEEP = 16  # specs kept per worker (one per executor the optimizer built; old ones are dropped)

    def __init__(self) -> None:
        self.specs: dict[str, WorkerSpec] = {}
        self.lock = threading.Lock()

    def _spec(self, box: list[Any]) -> WorkerSpec:
        ref = box[0]  # boxed, so Ray hands over the reference instead of a fresh copy per call
        key = ref.hex()
        with self.lock:
            spec = self.specs.get(key)
        if spec is None:
            spec = import_ray().get(ref)
            with self.lock:
                self.specs[key] = spec
                while len(self.specs) > self.KEEP:
                    self.specs.pop(next(iter(self.specs)))
        return spec

    def run(self, box: list[Any], workflow: dict[str, Any], inputs: dict[str, Any], budget: Any) -> dict[str, Any]:
        spec = self._spec(box)
        meter = UsageMeter()  # this example's usage only: it travels back with the trace
        remote_budget = RemoteBudget(budget) if budget is not None else None
        cache = RemoteCache(spec.cache) if spec.cache is not None else None
        clients = {name: LMClient(p, role=spec.role, cache=cache, meter=meter, budget=remote_budget,  # type: ignore[arg-type]
                                  default_seed=spec.default_seed, run_id=spec.run_id, retry=spec.retry)
                   for name, p in spec.providers.items()}
        default = clients[spec.default]
        executor = Executor(default, tools=spec.tools, models=lambda name: clients.get(name, default))
        trace, stopped, fatal = None, None, None
        try:
            trace = asyncio.run(executor.run(Workflow.model_validate(workflow), inputs))
        except BudgetExceeded as exc:
            stopped = str(exc)
        except LMPermanentError as exc:  # a bad key, an unknown model, no server: the driver stops the batch
            fatal = _shippable(exc)
        except Exception as exc:  # an executor bug must not sink the batch (as on the local path)
            trace = Trace(inputs=inputs, error=f"{type(exc).__name__}: {exc}")
        return {"trace": trace, "usage": meter.snapshot(), "stopped": stopped, "fatal": fatal}


def _shippable(exc: LMPermanentError) -> LMPermanentError:
    """``exc`` if it survives the trip back to the driver, else a plain LMPermanentError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return LMPermanentError(str(exc))


# -- the driver side ---------------------------------------------------------------------------
@dataclass
class _Pool:
    workers: list[Any]
    in_flight: list[int]

    def pick(self) -> int:
        return min(range(len(self.workers)), key=lambda i: self.in_flight[i])


class RayBackend:
    """Evaluations on Ray workers. ``address``: a cluster (default ``$RAY_ADDRESS``, else a local
    Ray started on first use); ``workers``: actors to start (default: one per CPU of the cluster,
    at most the evaluation's concurrency); ``init_options`` go to ``ray.init``."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        if address and address.startswith("ray://"):
            raise BackendError(f"--ray-address {address}: Ray Client is not supported (the cache is shared by "
                               "file on this node); run flowbot on a cluster node, e.g. through `ray job submit`")
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise BackendError(f"workers must be a whole number of at least 1, got {workers!r}")
        import_ray()  # fail now, with the install line, rather than after the run has started
        self.address = address
        self.workers = workers
        self.init_options = dict(init_options or {})
        self._pool: _Pool | None = None
        self._specs: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}  # key -> (ref, objects kept alive)
        self._caches: dict[str, Any] = {}

    # -- cluster objects -------------------------------------------------------------------
    def _ray(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, **self.init_options)
        return ray

    def _cache_actor(self, ray: Any, cache: ResponseCache | None) -> Any:
        if cache is None:
            return None
        if cache.path is None:
            raise BackendError("the Ray backend shares the response cache through its file: give a cache file "
                               "(e.g. cache='responses.sqlite') or no cache, not an in-memory cache")
        path = str(Path(cache.path).resolve())  # workers run in other directories
        if path not in self._caches:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            self._caches[path] = ray.remote(num_cpus=0)(CacheService).options(scheduling_strategy=here).remote(path)
        return self._caches[path]

    def _spec_ref(self, ray: Any, executor: Executor, workflow: Workflow) -> Any:
        """The executor's twin in the object store (one per executor and set of models)."""
        lm = executor.lm
        providers = {lm.model: lm.provider}
        for params in workflow.params.values():  # nodes that name their own model
            if params.model and params.model not in providers:
                providers[params.model] = executor.client_for(params).provider
        cache = lm.cache
        key = (tuple((n, id(p)) for n, p in sorted(providers.items())), id(executor.tools), lm.role,
               lm.default_seed, lm.run_id, id(lm.retry), id(cache))
        if key not in self._specs:
            spec = WorkerSpec(providers=providers, default=lm.model, role=lm.role, default_seed=lm.default_seed,
                              run_id=lm.run_id, retry=lm.retry, tools=executor.tools,
                              cache=self._cache_actor(ray, cache))
            _check_shippable(spec)
            # the objects in the key stay alive with it, so their ids cannot be reused by others
            self._specs[key] = (ray.put(spec), (providers, executor.tools, lm.retry, cache))
        return self._specs[key][0]

    def _workers(self, ray: Any, concurrency: int) -> _Pool:
        """One set of workers for every evaluation of this process: each holds a CPU, so a second
        set could wait forever for CPUs. They are named actors in this driver's Ray namespace, so
        every RayBackend of the process (the CLI's, a notebook's) shares them."""
        if self._pool is None:
            n = self.workers or max(1, min(concurrency, int(ray.cluster_resources().get("CPU", 1))))
            threads = max(4, math.ceil(concurrency / n))
            actor = ray.remote(num_cpus=1, max_concurrency=threads)(Worker)
            workers = [actor.options(name=f"{WORKER_NAME}-{i}", get_if_exists=True).remote() for i in range(n)]
            self._pool = _Pool(workers, [0] * n)
        return self._pool

    # -- one evaluation --------------------------------------------------------------------
    async def evaluate(self, executor: Executor, workflow: Workflow, examples: list[dict[str, Any]],
                       metric: Metric, *, concurrency: int = 8, progress: Any = False,
                       description: str = "evaluating",
                       on_result: Callable[[ExampleResult], None] | None = None,
                       guard_metric: bool = True) -> BatchResult:
        """The local path's semantics (see :func:`flowbot.runtime.batch.evaluate_examples`): the
        first permanent LM error on any worker stops the batch and is raised here, and so is a
        :class:`flowbot.errors.MetricFailure` when the metric fails on most of the first examples;
        the workers' examples still running stop at their next call (the budget actor says stop)."""
        ray = self._ray()
        concurrency = max(1, concurrency)
        box = [self._spec_ref(ray, executor, workflow)]
        pool = self._workers(ray, concurrency)
        budget = executor.lm.budget
        # always a budget actor, even without a budget: it is how a stop reaches the workers
        chain = budget.mirror() if budget is not None else Budget().mirror()
        budget_actor = ray.remote(num_cpus=0)(BudgetService).remote(chain)
        data = Workflow.model_validate(workflow.model_dump()).model_dump(mode="json")
        start = time.perf_counter()
        results: list[ExampleResult | None] = [None] * len(examples)
        stop_reason: list[str] = []
        fatal: list[BaseException] = []  # the first error that stops the batch
        guard = MetricGuard(metric_name(metric), len(examples)) if guard_metric else None
        semaphore = asyncio.Semaphore(concurrency)
        bar, task_id, owns_bar = progress_bar(progress, description, len(examples))
        tasks: list[asyncio.Future[None]] = []

        def stop_all(exc: BaseException) -> None:
            if not fatal:
                fatal.append(exc)
                budget_actor.stop.remote(f"the evaluation stopped: {exc}")  # no worker starts another call
            me = asyncio.current_task()
            for t in tasks:
                if t is not me:
                    t.cancel()

        async def one(i: int, ex: dict[str, Any]) -> None:
            if stop_reason or fatal:
                return
            async with semaphore:
                if stop_reason or fatal:
                    return
                inputs = workflow_inputs(workflow, ex)
                w = pool.pick()
                pool.in_flight[w] += 1
                try:
                    out = await pool.workers[w].run.remote(box, data, inputs, budget_actor)
                except Exception as exc:  # a worker that died: the example fails, the batch goes on
                    out = {"trace": Trace(inputs=inputs, error=f"{type(exc).__name__}: {exc}"), "usage": {},
                           "stopped": None}
                finally:
                    pool.in_flight[w] -= 1
                _account(executor.lm, out["usage"])
                if out.get("fatal") is not None:
                    stop_all(out["fatal"])
                    return
                if out["stopped"]:
                    if not fatal:
                        stop_reason.append(out["stopped"])
                    return
                try:
                    res = await score_guarded(metric, guard, i, ex, out["trace"])
                except MetricFailure as exc:
                    stop_all(exc)
                    return
                results[i] = res
                if on_result is not None:
                    on_result(res)
                if bar is not None:
                    bar.advance(task_id)

        relay = asyncio.ensure_future(_relay_stops(budget, budget_actor)) if budget is not None else None
        tasks.extend(asyncio.ensure_future(one(i, ex)) for i, ex in enumerate(examples))
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()  # only matters when this evaluation itself is cancelled
            if relay is not None:
                relay.cancel()
            if owns_bar and bar is not None:
                bar.refresh()  # the final count (Jupyter shows only what was last refreshed)
                bar.stop()
            ray.kill(budget_actor)
        if fatal:
            raise fatal[0]
        for outcome in outcomes:  # anything else one() raised (e.g. an on_result callback's bug)
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        return collect(results, len(examples), stop_reason, start)

    def shutdown(self) -> None:
        """Stop the workers (shared by the process's backends) and this backend's cache actors; the
        Ray cluster itself is left running."""
        ray = import_ray()
        for w in self._pool.workers if self._pool is not None else []:
            ray.kill(w)
        for actor in self._caches.values():
            ray.kill(actor)
        self._pool = None
        self._specs.clear()
        self._caches.clear()


def _account(lm: LMClient, usage: dict[str, RoleUsage]) -> None:
    """A remote example's usage, counted here as the local path counts it."""
    if not usage:
        return
    lm.meter.merge(usage)
    if lm.budget is not None:
        lm.budget.charge(sum(u.calls for u in usage.values()),
                         sum(u.prompt_tokens + u.completion_tokens for u in usage.values()),
                         sum(u.cost_usd for u in usage.values()))


async def _relay_stops(budget: Budget, actor: Any) -> None:
    """Tell the budget actor when this side's budget says stop (STOP file, time, a parent's cap)."""
    while True:
        reason = budget.exhausted_reason()
        if reason:
            actor.stop.remote(reason)
            return
        await asyncio.sleep(POLL_S)


def _check_shippable(spec: WorkerSpec) -> None:
    import cloudpickle

    for name, provider in spec.providers.items():
        try:
            cloudpickle.dumps(provider)
        except Exception as exc:
            raise BackendError(
                f"model {name!r} ({type(provider).__name__}) cannot be shipped to Ray workers ({exc}); serve it over "
                "HTTP (e.g. llama.cpp's server or vLLM) and use --base-url") from None
    try:
        cloudpickle.dumps(spec.tools)
    except Exception as exc:
        raise BackendError(f"the tools cannot be shipped to Ray workers ({exc})") from None
