"""The llama.cpp engine under :class:`~flowbot.lm.local.llama.LlamaCppProvider`: the hardware
probing (cores, AMX), the process-wide table of loaded models, each model's single worker thread,
grammar compilation, and the one patch of llama-cpp-python (``use_extra_bufts``). The provider
(what a request becomes and when a model is fetched) is in :mod:`flowbot.lm.local.llama`; the
design notes are there too.

Nothing here imports llama-cpp-python until a model is loaded or a grammar compiled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from flowbot.lm.base import LMPermanentError, LMRequest, Usage
from flowbot.lm.local.kvreuse import reusing_llama_class
from flowbot.lm.schema import unsupported_parts

MISSING_EXTRA = "the embedded model needs llama-cpp-python: pip install 'flowbot[local]'"
ENV_THREADS = "FLOWBOT_LOCAL_THREADS"
_UINT32_SEEDS = 0xFFFFFFFF  # llama.cpp treats 0xFFFFFFFF as "random", so seeds are taken modulo it
_GRAMMARS_KEPT = 256  # compiled grammars per loaded model (a few kB each)


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a one-line :class:`LMPermanentError` saying what to install."""
    if "llama_cpp" not in sys.modules:
        # llama.cpp's CPU threads meet at OpenMP barriers where libgomp busy-waits by default.
        # When anything else needs a core (a tool subprocess, another job) the spinning thread
        # starves the working one: measured 26 -> 1 generated tok/s on 2 cores. A short spin
        # keeps the idle-machine speed (26 tok/s) and gives ~10 tok/s under that load. libgomp
        # reads this when it is loaded, i.e. on the first import; users can still override it.
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    try:
        import llama_cpp
    except ImportError:
        raise LMPermanentError(MISSING_EXTRA) from None
    return llama_cpp


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units,
    and llama.cpp runs slower with more threads than cores)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text(), topo.joinpath("core_id").read_text()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_threads() -> int:
    value = os.environ.get(ENV_THREADS, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise LMPermanentError(f"{ENV_THREADS} must be a whole number, got {value!r}") from None
    return physical_cores()


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class EngineSettings:
    """Everything that determines a loaded model; the key of the process-wide model table."""

    path: str
    n_ctx: int
    n_threads: int
    n_batch: int = 256  # also the prefix-reuse block
    flash_attn: bool = True
    #: llama.cpp's extra weight layouts (AMX / repacked). Off on AMX CPUs: llama-cpp-python
    #: 0.3.36 built with native flags crashes (SIGSEGV in decode) there with its AMX layout.
    extra_buffers: bool = True
    chat_format: str | None = None  # None = the template stored in the GGUF
    prefix_cache_bytes: int = 512 << 20  # KV snapshots of alternating prefixes; 0 = none


@dataclass
class EngineStats:
    """Counters of one loaded model (all calls, all providers)."""

    calls: int = 0
    prompt_tokens: int = 0  # as reported (the whole prompt)
    prompt_tokens_evaluated: int = 0  # actually computed: the rest came from the KV cache
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time of the calls
    prompt_seconds: float = 0.0  # llama.cpp's own timers: prompt evaluation ...
    generation_seconds: float = 0.0  # ... and token generation

    @property
    def prompt_tokens_reused(self) -> int:
        return self.prompt_tokens - self.prompt_tokens_evaluated


@dataclass
class Engine:
    """One loaded ``Llama`` and the single thread allowed to use it."""

    settings: EngineSettings
    llama: Any
    executor: ThreadPoolExecutor
    stats: EngineStats = field(default_factory=EngineStats)
    closed: bool = False
    #: compiled grammars by schema text, most recently used last; used on the worker thread only
    grammars: "OrderedDict[str, Any]" = field(default_factory=OrderedDict)

    def grammar(self, schema: str) -> Any:
        """The grammar for a schema (canonical JSON text), compiled on first use."""
        found = self.grammars.get(schema)
        if found is None:
            found = self.grammars[schema] = compile_grammar(schema)
            while len(self.grammars) > _GRAMMARS_KEPT:
                self.grammars.popitem(last=False)
        else:
            self.grammars.move_to_end(schema)
        return found

    def submit(self, fn: Callable[..., Any], *args: Any) -> "Future[Any]":
        return self.executor.submit(fn, self, *args)

    def perf(self) -> tuple[int, float, float]:
        """llama.cpp's running counters: prompt tokens computed, prompt ms, generation ms."""
        data = import_llama_cpp().llama_perf_context(self.llama.ctx)
        return int(data.n_p_eval), float(data.t_p_eval_ms), float(data.t_eval_ms)

    def close(self) -> None:
        self.closed = True
        self.executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.llama.close()


_ENGINES: dict[EngineSettings, Engine] = {}
_ENGINES_LOCK = threading.Lock()
#: serializes fetch-then-load, so concurrent first calls download and load a model only once
LOAD_LOCK = threading.Lock()


def engine_for(settings: EngineSettings) -> Engine:
    """The loaded model for these settings, loading it on first use (blocking)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(settings)
        if engine is None:
            llama = _load(settings)
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowbot-llama")
            engine = _ENGINES[settings] = Engine(settings, llama, executor)
        return engine


def loaded_engines() -> dict[EngineSettings, EngineStats]:
    """Settings and counters of every model loaded in this process."""
    with _ENGINES_LOCK:
        return {s: e.stats for s, e in _ENGINES.items()}


def unload_all() -> None:
    """Free every loaded model (the next call loads it again)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()


@contextlib.contextmanager
def _model_params_patch(llama_cpp: Any, extra_buffers: bool) -> Iterator[None]:
    """llama-cpp-python exposes no switch for ``use_extra_bufts``; it builds the model parameters
    from ``llama_model_default_params()`` inside ``Llama.__init__``, so wrap that function for
    the duration of one load (callers hold ``_ENGINES_LOCK``)."""
    if extra_buffers:
        yield
        return
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = patched
    try:
        yield
    finally:
        module.llama_model_default_params = original


def _load(settings: EngineSettings) -> Any:
    llama_cpp = import_llama_cpp()
    with _model_params_patch(llama_cpp, settings.extra_buffers):
        try:
            llama = reusing_llama_class(llama_cpp)(
                model_path=settings.path,
                block=settings.n_batch,
                snapshot_bytes=settings.prefix_cache_bytes,
                n_ctx=settings.n_ctx,
                n_threads=settings.n_threads,
                n_threads_batch=settings.n_threads,
                flash_attn=settings.flash_attn,
                chat_format=settings.chat_format,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise LMPermanentError(f"llama.cpp could not load {settings.path}: {exc}") from None
    return llama


def compile_grammar(schema: str) -> Any:
    """The llama.cpp grammar enforcing a JSON schema (canonical JSON text).

    Raises :class:`LMPermanentError` naming the parts the grammar would not enforce (see
    :func:`flowbot.lm.schema.unsupported_parts`) or the converter's own error; never returns a
    grammar that decodes part of the schema unconstrained."""
    try:
        parsed = json.loads(schema)
    except ValueError as exc:
        raise LMPermanentError(f"the request's JSON schema is not JSON: {exc}") from None
    problems = unsupported_parts(parsed)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LMPermanentError("the embedded model cannot enforce this JSON schema: "
                               + "; ".join(problems[:3]) + more)
    llama_cpp = import_llama_cpp()
    try:
        return llama_cpp.LlamaGrammar.from_json_schema(schema, verbose=False)
    except Exception as exc:  # the converter reports with assert, ValueError, KeyError...
        raise LMPermanentError(
            f"llama.cpp cannot build a grammar from the JSON schema: {type(exc).__name__}: {exc}"[:500]) from None


def check_gguf(path: Path) -> None:
    """Fail with a clear message unless ``path`` is a readable GGUF file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LMPermanentError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise LMPermanentError(f"{path} is not a GGUF model file")


def _seed_for(request: LMRequest, index: int) -> int:
    if request.seed is None:
        return random.randrange(_UINT32_SEEDS)
    return (request.seed + index) % _UINT32_SEEDS


def generate(engine: Engine, request: LMRequest, default_max_tokens: int) -> tuple[list[str], Usage]:
    """Run on the model's worker thread: all ``request.n`` samples, one after another."""
    texts: list[str] = []
    usage = first = Usage()
    greedy = request.temperature <= 0
    for i in range(request.n):
        if greedy and i > 0:  # greedy decoding is deterministic: every sample is the first
            texts.append(texts[0])
            usage = usage + first
            continue
        text, sample_usage = _one_sample(engine, request, i, default_max_tokens)
        texts.append(text)
        usage = usage + sample_usage
        first = sample_usage
    return texts, usage


def _one_sample(engine: Engine, request: LMRequest, index: int, default_max_tokens: int) -> tuple[str, Usage]:
    started = time.perf_counter()
    constrained = {} if request.schema is None else {"grammar": engine.grammar(request.schema)}
    perf_before = engine.perf()
    try:
        out = engine.llama.create_chat_completion(
            messages=request.message_dicts(),
            temperature=max(request.temperature, 0.0),
            max_tokens=request.max_tokens or default_max_tokens,
            stop=list(request.stop),
            seed=_seed_for(request, index),
            **constrained,
        )
    except ValueError as exc:  # e.g. "Requested tokens (9000) exceed context window of 8192"
        engine.llama.forget_reuse()
        raise LMPermanentError(f"{Path(engine.settings.path).name}: {exc} (raise n_ctx or shorten the prompt)") from None
    except BaseException as exc:
        engine.llama.forget_reuse()
        if isinstance(exc, RuntimeError):
            raise LMPermanentError(f"llama.cpp failed: {exc}") from None
        raise
    text = out["choices"][0]["message"].get("content") or ""
    u = out.get("usage") or {}
    usage = Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))
    _record(engine, usage, perf_before, time.perf_counter() - started)
    return text, usage


def _record(engine: Engine, usage: Usage, perf_before: tuple[int, float, float], seconds: float) -> None:
    n_p_eval, prompt_ms, gen_ms = (after - before for after, before in zip(engine.perf(), perf_before))
    stats = engine.stats
    stats.calls += 1
    stats.prompt_tokens += usage.prompt_tokens
    stats.prompt_tokens_evaluated += max(0, int(n_p_eval))
    stats.completion_tokens += usage.completion_tokens
    stats.seconds += seconds
    stats.prompt_seconds += prompt_ms / 1000
    stats.generation_seconds += gen_ms / 1000
