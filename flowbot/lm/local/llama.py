"""``LlamaCppProvider``: a GGUF model run in-process on the CPU by llama.cpp (llama-cpp-python).

    >>> import asyncio
    >>> from flowbot.lm import LMClient
    >>> lm = LMClient(LlamaCppProvider("qwen2.5-coder-0.5b"))      # doctest: +SKIP
    >>> asyncio.run(lm.complete([{"role": "user", "content": "2+2?"}], max_tokens=8)).text  # doctest: +SKIP
    '2 + 2 equals 4.'

Design notes (measured facts are in ``benchmarks/local_model.py``):

* **Loaded once per process.** Loaded models live in a process-wide table keyed by
  :class:`EngineSettings` (file path + every setting that changes the loaded object), so any
  number of providers and clients — e.g. the task and optimizer roles on the same model — share
  one copy of the weights. :func:`unload_all` empties the table. The table is guarded by a lock.
* **One worker thread per loaded model.** A ``Llama`` object is not thread-safe and evaluates one
  sequence at a time, so each loaded model gets a single-thread executor: calls run there one
  after another while the event loop stays free. A request cancelled while it waits in the queue
  never runs (a generation already running finishes; ``max_tokens`` bounds it).
* **Prefix reuse that keeps outputs reproducible.** Prompts rendered shared-part-first
  (instruction, demos, then the example) reuse the KV cache of earlier prompts in whole blocks of
  ``n_batch`` tokens, evaluated exactly as a cold run would (see :mod:`.kvreuse`): the text for a
  request never depends on what ran before it. Up to ``prefix_cache_mb`` of KV snapshots keep
  several alternating prefixes (one per workflow node) warm.
* **Sampling.** ``temperature == 0`` is greedy; otherwise top-k 40 / top-p 0.95 / min-p 0.05
  (llama.cpp's defaults) with the request's seed: sample *i* uses ``seed + i``, so the same seed
  gives the same text. Unseeded requests draw a fresh random seed.
* **Usage** is reported in real tokens like a hosted provider; the price is 0 dollars.
* **Structured output.** A request with a JSON schema is decoded under a grammar compiled from it
  (``llama_cpp.LlamaGrammar.from_json_schema``), passed to ``create_chat_completion`` as
  ``grammar=`` (not through ``response_format``, which ignores OpenAI's ``json_schema`` form and
  falls back to plain JSON when a schema does not convert). Grammars are compiled once per schema
  and kept on the loaded model. Every schema is checked first: the converter silently ignores
  keywords it does not know, so a schema with one (numeric bounds, ``pattern``, ``allOf``, a
  list of types...) is refused with an :class:`LMPermanentError` naming the part — the subset
  that is enforced is listed in :mod:`flowbot.lm.schema` (types, ``enum``/``const``,
  ``anyOf``/``oneOf``, ``properties``/``required``/``additionalProperties``, ``items`` with
  ``minItems``/``maxItems``, ``minLength``/``maxLength``, local ``$ref``; properties are
  generated in schema order, required ones first). Bound strings with ``maxLength``: the grammar
  forces JSON, not brevity, and ``max_tokens`` cuts a long reply short of its closing brace.
  Masking the vocabulary costs time per generated token (``benchmarks/local_model.py
  --grammar`` measures it). The grammar only filters sampling; prefix reuse only touches KV
  cells before generation starts, and llama-cpp-python builds a fresh grammar sampler for every
  call, so the two combine without interfering.
"""

from __future__ import annotations

import asyncio
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

from flowbot.lm.base import Completion, LMPermanentError, LMRequest, Provider, Usage
from flowbot.lm.local.kvreuse import reusing_llama_class
from flowbot.lm.local.registry import DEFAULT_MODEL, ModelSpec, get_model, human_size, strip_prefix
from flowbot.lm.local.store import model_path, state_of
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
class _Engine:
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


_ENGINES: dict[EngineSettings, _Engine] = {}
_ENGINES_LOCK = threading.Lock()
#: serializes fetch-then-load, so concurrent first calls download and load a model only once
_LOAD_LOCK = threading.Lock()


def _engine_for(settings: EngineSettings) -> _Engine:
    """The loaded model for these settings, loading it on first use (blocking)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(settings)
        if engine is None:
            llama = _load(settings)
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowbot-llama")
            engine = _ENGINES[settings] = _Engine(settings, llama, executor)
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


class LlamaCppProvider(Provider):
    """A local GGUF model: a registry name (fetched and verified on first use) or a file path.

    Nothing is loaded until the first request (or :meth:`load`); then the model stays loaded for
    the life of the process and is shared with every provider using the same settings.

    ``n_ctx``: context window (default: the registry's recommendation, 8192; 4096 for other
    files). ``n_threads``: default physical cores (``$FLOWBOT_LOCAL_THREADS`` overrides).
    ``n_batch``: prompt evaluation block, also the unit of prefix reuse. ``default_max_tokens``:
    used when a request sets none. ``auto_pull``: fetch and verify a registry model on first use
    (else fail unless ``flowbot models pull`` did it). ``extra_buffers``: llama.cpp's repacked
    weight layouts (None = on, except on AMX CPUs where they crash). ``flash_attn``: None = the
    registry's measured choice (on for other files). ``prefix_cache_mb``: KV
    snapshots of alternating prompt prefixes (0 turns them off).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelSpec = DEFAULT_MODEL,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 256,
        flash_attn: bool | None = None,
        default_max_tokens: int = 1024,
        models_dir: str | os.PathLike[str] | None = None,
        auto_pull: bool = True,
        progress: bool = True,
        extra_buffers: bool | None = None,
        chat_format: str | None = None,
        prefix_cache_mb: int = 512,
    ) -> None:
        self.spec: ModelSpec | None = None
        self.path: Path
        if isinstance(model, ModelSpec) or (isinstance(model, str) and not _looks_like_path(model)):
            self.spec = get_model(model)
            self.path = model_path(self.spec, models_dir)
            self.model = f"local/{self.spec.name}"
        else:
            self.path = Path(strip_prefix(os.fspath(model))).expanduser().resolve()
            self.model = f"local/{self.path.name}"
        self.n_ctx = n_ctx or (self.spec.n_ctx if self.spec else 4096)
        self.n_threads = n_threads or default_threads()
        self.n_batch = n_batch
        self.flash_attn = flash_attn if flash_attn is not None else (self.spec.flash_attn if self.spec else True)
        self.extra_buffers = (not cpu_has_amx()) if extra_buffers is None else extra_buffers
        self.chat_format = chat_format or (self.spec.chat_format if self.spec else None)
        self.prefix_cache_bytes = max(0, prefix_cache_mb) << 20
        self.default_max_tokens = default_max_tokens
        self.models_dir = models_dir
        self.auto_pull = auto_pull
        self.progress = progress
        #: requests run one at a time on the model's worker thread; admitting more only queues
        #: them, and admitting one at a time lets budgets be checked just before each call
        self.max_concurrency = 1
        #: a request's JSON schema is enforced by a grammar (see the module notes)
        self.supports_schema = True
        self._engine: _Engine | None = None

    def __repr__(self) -> str:
        return f"LlamaCppProvider({self.model!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"

    # -- loading ---------------------------------------------------------------------------
    def settings(self) -> EngineSettings:
        return EngineSettings(
            path=str(self.path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_batch=self.n_batch,
            flash_attn=self.flash_attn,
            extra_buffers=self.extra_buffers,
            chat_format=self.chat_format,
            prefix_cache_bytes=self.prefix_cache_bytes,
        )

    def ensure_file(self) -> Path:
        """The model file, fetched and checksum-verified first for registry models (blocking)."""
        if self.spec is None:
            if not self.path.is_file():
                raise LMPermanentError(f"model file not found: {self.path}")
        elif self.auto_pull:
            from flowbot.lm.local.pull import pull

            self.path = pull(self.spec, progress=self.progress, models_dir=self.models_dir)
        elif state_of(self.spec, self.models_dir) != "verified":
            raise LMPermanentError(
                f"local model {self.spec.name} ({human_size(self.spec.size)}) is not installed or not "
                f"verified; run: flowbot models pull {self.spec.name}"
            )
        check_gguf(self.path)
        return self.path

    def load(self) -> "LlamaCppProvider":
        """Fetch (if needed) and load the model now instead of on the first request (blocking)."""
        if self._engine is None or self._engine.closed:
            import_llama_cpp()
            with _LOAD_LOCK:
                self.ensure_file()
                self._engine = _engine_for(self.settings())
        return self

    async def _get_engine(self) -> _Engine:
        if self._engine is None or self._engine.closed:
            await asyncio.to_thread(self.load)
        assert self._engine is not None
        return self._engine

    @property
    def stats(self) -> EngineStats | None:
        """Counters of the loaded model (shared with other providers on it), or None if not loaded."""
        return self._engine.stats if self._engine else None

    def price_per_token(self) -> tuple[float, float]:
        return (0.0, 0.0)

    # -- calls -----------------------------------------------------------------------------
    async def complete(self, request: LMRequest) -> Completion:
        engine = await self._get_engine()
        future = engine.submit(_generate, request, self.default_max_tokens)
        # Cancelling the awaiting task cancels the queued job too (asyncio chains the futures).
        texts, usage = await asyncio.wrap_future(future)
        return Completion(texts=texts, usage=usage, model=self.model)

    def complete_sync(self, request: LMRequest) -> Completion:
        """The same call for synchronous code (benchmarks, scripts)."""
        self.load()
        assert self._engine is not None
        texts, usage = self._engine.submit(_generate, request, self.default_max_tokens).result()
        return Completion(texts=texts, usage=usage, model=self.model)


def _looks_like_path(model: str) -> bool:
    name = strip_prefix(model)
    return name.lower().endswith(".gguf") or "/" in name or os.sep in name


def _seed_for(request: LMRequest, index: int) -> int:
    if request.seed is None:
        return random.randrange(_UINT32_SEEDS)
    return (request.seed + index) % _UINT32_SEEDS


def _generate(engine: _Engine, request: LMRequest, default_max_tokens: int) -> tuple[list[str], Usage]:
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


def _one_sample(engine: _Engine, request: LMRequest, index: int, default_max_tokens: int) -> tuple[str, Usage]:
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


def _record(engine: _Engine, usage: Usage, perf_before: tuple[int, float, float], seconds: float) -> None:
    n_p_eval, prompt_ms, gen_ms = (after - before for after, before in zip(engine.perf(), perf_before))
    stats = engine.stats
    stats.calls += 1
    stats.prompt_tokens += usage.prompt_tokens
    stats.prompt_tokens_evaluated += max(0, int(n_p_eval))
    stats.completion_tokens += usage.completion_tokens
    stats.seconds += seconds
    stats.prompt_seconds += prompt_ms / 1000
    stats.generation_seconds += gen_ms / 1000
