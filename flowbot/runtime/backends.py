"""Where the examples of an evaluation run: here, on this process's event loop (``asyncio``, the
default), or spread over the workers of a Ray cluster (``ray``, see :mod:`flowbot.runtime.ray_backend`).

    >>> make_backend("asyncio") is None      # the local path needs no object
    True

A backend is passed to :func:`~flowbot.runtime.batch.evaluate_examples`, or made active for a block
with :func:`use_backend`, which reaches the evaluations the optimizers start inside it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from flowbot.graph.sketch import Workflow
    from flowbot.runtime.batch import BatchResult, ExampleResult
    from flowbot.runtime.executor import Executor
    from flowbot.runtime.scoring import Metric

BACKENDS = ("asyncio", "ray")


class Backend(Protocol):
    name: str

    async def evaluate(self, executor: "Executor", workflow: "Workflow", examples: list[dict[str, Any]],
                       metric: "Metric", *, concurrency: int, progress: Any, description: str,
                       on_result: Callable[["ExampleResult"], None] | None,
                       guard_metric: bool = True) -> "BatchResult":
        """Run and score every example, with the semantics of the local path: the executor's
        cache, meter and budget see every call; a used-up budget stops launching examples; the
        first permanent LM error is raised and stops the rest, and so is a broken metric's
        ``MetricFailure`` (unless ``guard_metric`` is False)."""


_ACTIVE: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("flowbot_backend", default=None)


def active_backend() -> Backend | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def use_backend(backend: Backend | None) -> Iterator[None]:
    token = _ACTIVE.set(backend)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def make_backend(backend: "str | Backend | None", *, address: str | None = None,
                 workers: int | None = None) -> Backend | None:
    """``"asyncio"``/None: the local path (None). ``"ray"``: a :class:`RayBackend` that connects to
    ``address`` (default: ``$RAY_ADDRESS``, else a local Ray started on first use)."""
    if backend is None or backend == "asyncio":
        return None
    if not isinstance(backend, str):
        return backend
    if backend == "ray":
        from flowbot.runtime.ray_backend import RayBackend

        return RayBackend(address=address, workers=workers)
    raise ValueError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
