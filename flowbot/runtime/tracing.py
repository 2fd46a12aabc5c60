"""A small tracing hook for the executor: one span per workflow run and one per node run.

The runtime knows nothing of any tracing product; an adapter (``flowbot.integrations.mlflow``)
implements :class:`Tracer`. A tracer is given to an :class:`~flowbot.runtime.executor.Executor`
directly, or made active for a block of code with :func:`use_tracer`, which reaches every executor
the optimizers build inside that block (they build several, one per budget share) without passing
it through every loop. The active tracer is a context variable: concurrent runs in other contexts
(threads, other tasks started outside the block) do not see it.

    >>> class Printer:
    ...     def start_span(self, name, kind, inputs, parent=None, attributes=None):
    ...         print("start", kind, name)
    ...         return self
    ...     def end(self, outputs=None, attributes=None, error=None):
    ...         pass
    >>> with use_tracer(Printer()):
    ...     active_tracer() is not None
    True

A tracer that raises never fails a node: a warning is shown and the span is dropped.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Any, Iterator, Mapping, Protocol

class Span(Protocol):
    def end(self, outputs: Any = None, attributes: Mapping[str, Any] | None = None,
            error: str | None = None) -> None:
        """Close the span with what the step produced (``error`` when it failed)."""


class Tracer(Protocol):
    def start_span(self, name: str, kind: str, inputs: Mapping[str, Any], parent: Span | None = None,
                   attributes: Mapping[str, Any] | None = None) -> Span:
        """Open a span. ``kind``: ``workflow`` for a whole run, else the node kind (llm, tool,
        branch, merge); ``parent`` is the workflow span for node spans."""


_ACTIVE: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("flowbot_tracer", default=None)


def active_tracer() -> Tracer | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def use_tracer(tracer: Tracer | None) -> Iterator[None]:
    """Make ``tracer`` the one executors use in this context (``None`` turns tracing off)."""
    token = _ACTIVE.set(tracer)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _complain(what: str, exc: Exception) -> None:
    # a warning (shown once per place by Python's default filter): a broken tracer must not flood the log
    warnings.warn(f"tracer failed to {what} ({type(exc).__name__}: {exc}); the span is dropped, the run goes on",
                  RuntimeWarning, stacklevel=3)


def start_span(tracer: Tracer | None, name: str, kind: str, inputs: Mapping[str, Any],
               parent: Span | None = None, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """``tracer.start_span`` that never raises (None when there is no tracer or it failed)."""
    if tracer is None:
        return None
    try:
        return tracer.start_span(name, kind, inputs, parent=parent, attributes=attributes)
    except Exception as exc:
        _complain("start a span", exc)
        return None


def end_span(span: Span | None, outputs: Any = None, attributes: Mapping[str, Any] | None = None,
             error: str | None = None) -> None:
    if span is None:
        return
    try:
        span.end(outputs=outputs, attributes=attributes, error=error)
    except Exception as exc:
        _complain("end a span", exc)
