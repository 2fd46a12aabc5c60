"""Running a coroutine from synchronous code, also where an event loop is already running.

Jupyter (and any async application) runs its cells inside an event loop, where ``asyncio.run``
refuses to start a second one. The sync entry points (``flowbot.evaluate``, ``flowbot.optimize``,
``workflow(...)``) then run their coroutine on a private loop in a worker thread and wait for it.

    >>> async def answer():
    ...     return 42
    >>> run_sync(answer())
    42
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, or the same on a private loop in a worker thread when this thread
    already runs a loop. Context variables (e.g. an active tracer) are carried into the thread.

    The caller's loop is blocked while it waits, as any synchronous call would block it; code that
    can ``await`` should use the async API (``aevaluate``, ``aoptimize``, ``workflow.arun``)."""
    if not loop_is_running():
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(asyncio.run, coro)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="flowbot-sync", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
