"""Which backends exist and how one is made from its name: ``asyncio`` (the default: this process's
event loop) or ``ray`` (the workers of a Ray cluster, see :mod:`flowbot.runtime.ray_backend`).

    >>> make_backend("asyncio") is None      # the local path needs no object
    True

What a backend is (:class:`~flowbot.runtime.batch.Backend`) and how one is made active for a block
(:func:`~flowbot.runtime.batch.use_backend`) live beside the evaluation that uses them, in
:mod:`flowbot.runtime.batch`.
"""

from __future__ import annotations

from flowbot.errors import FlowBotError
from flowbot.runtime.batch import Backend

BACKENDS = ("asyncio", "ray")


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
    raise FlowBotError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
