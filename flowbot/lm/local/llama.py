"""``LlamaCppProvider``: a GGUF model run in-process on the CPU by llama.cpp (llama-cpp-python).

    >>> import asyncio
    >>> from flowbot.lm import LMClient
    >>> lm = LMClient(LlamaCppProvider("qwen2.5-coder-0.5b"))      # doctest: +SKIP
    >>> asyncio.run(lm.complete([{"role": "user", "content": "2+2?"}], max_tokens=8)).text  # doctest: +SKIP
    '2 + 2 equals 4.'

Design notes (measured facts are in ``benchmarks/local_model.py``):

The engine under it (hardware probing, the table of loaded models, their worker threads, the
llama.cpp patch) is :mod:`flowbot.lm.local.engine`.

* **Loaded once per process.** Loaded models live in a process-wide table keyed by
  :class:`~flowbot.lm.local.engine.EngineSettings` (file path + every setting that changes the loaded object), so any
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
import dataclasses
import os
from pathlib import Path

from flowbot.lm.base import Completion, LMPermanentError, LMRequest, Provider
from flowbot.lm.local.engine import (
    LOAD_LOCK,
    Engine,
    EngineSettings,
    EngineStats,
    check_gguf,
    cpu_has_amx,
    default_threads,
    engine_for,
    generate,
    import_llama_cpp,
)
from flowbot.lm.local.registry import DEFAULT_MODEL, ModelSpec, get_model, human_size, strip_prefix
from flowbot.lm.local.store import model_path, state_of


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
        #: what the loaded model is made with (its path follows :attr:`path`: see :meth:`settings`)
        self.engine_settings = EngineSettings(
            path=str(self.path),
            n_ctx=n_ctx or (self.spec.n_ctx if self.spec else 4096),
            n_threads=n_threads or default_threads(),
            n_batch=n_batch,
            flash_attn=flash_attn if flash_attn is not None else (self.spec.flash_attn if self.spec else True),
            extra_buffers=(not cpu_has_amx()) if extra_buffers is None else extra_buffers,
            chat_format=chat_format or (self.spec.chat_format if self.spec else None),
            prefix_cache_bytes=max(0, prefix_cache_mb) << 20,
        )
        self.default_max_tokens = default_max_tokens
        self.models_dir = models_dir
        self.auto_pull = auto_pull
        self.progress = progress
        #: requests run one at a time on the model's worker thread; admitting more only queues
        #: them, and admitting one at a time lets budgets be checked just before each call
        self.max_concurrency = 1
        #: a request's JSON schema is enforced by a grammar (see the module notes)
        self.supports_schema = True
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        s = self.engine_settings
        return f"LlamaCppProvider({self.model!r}, n_ctx={s.n_ctx}, n_threads={s.n_threads})"

    # -- loading ---------------------------------------------------------------------------
    def settings(self) -> EngineSettings:
        """The key of the loaded model: :attr:`engine_settings` at the file's current path."""
        return dataclasses.replace(self.engine_settings, path=str(self.path))

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
            with LOAD_LOCK:
                self.ensure_file()
                self._engine = engine_for(self.settings())
        return self

    async def _get_engine(self) -> Engine:
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
        future = engine.submit(generate, request, self.default_max_tokens)
        # Cancelling the awaiting task cancels the queued job too (asyncio chains the futures).
        texts, usage = await asyncio.wrap_future(future)
        return Completion(texts=texts, usage=usage, model=self.model)

    def complete_sync(self, request: LMRequest) -> Completion:
        """The same call for synchronous code (benchmarks, scripts)."""
        self.load()
        assert self._engine is not None
        texts, usage = self._engine.submit(generate, request, self.default_max_tokens).result()
        return Completion(texts=texts, usage=usage, model=self.model)


def _looks_like_path(model: str) -> bool:
    name = strip_prefix(model)
    return name.lower().endswith(".gguf") or "/" in name or os.sep in name
