"""math-verify checks, in this process or as a worker process speaking JSON lines.

Run as a script (by path, so it imports nothing of flowbot), it reads one request per line on
stdin, ``{"pred": ..., "gold": ..., "timeout": ...}``, and answers ``{"equal": true|false}`` on
stdout. It first writes ``{"ready": true}`` once math-verify is imported. It exits when stdin
closes, so it never outlives its parent.

Time limits count CPU time, not wall time. math-verify's own timeouts are ``signal.alarm`` (wall
clock): on a machine busy with a model, a check starved of the CPU ran out of time before it had
computed anything and a correct answer scored 0. Here each request gets ``4 * timeout`` seconds of
this process's CPU time (``ITIMER_PROF``; the worker has one thread, so that time is the check's),
and the kernel ends the process if it uses ``BACKSTOP_SECONDS`` more (``RLIMIT_CPU``): the backstop
for a check stuck in C code, where no Python signal handler runs.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

try:  # POSIX only; elsewhere math-verify's own timeouts are used
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

T = TypeVar("T")

#: CPU seconds a request may use beyond its own limit before the kernel ends the worker
BACKSTOP_SECONDS = 10


def cpu_seconds(timeout: int) -> int:
    """A check's CPU time: two parses that may each parse twice, and a comparison, share it."""
    return 4 * timeout
#: whether this platform can limit CPU time (else math-verify's wall-clock alarms stay on)
CPU_LIMITS = hasattr(signal, "setitimer") and resource is not None


class CpuTimeout(BaseException):
    """A check used up its CPU time. A BaseException, so math-verify's ``except Exception``
    clauses cannot swallow it and go on computing without a limit."""


def _on_cpu_timeout(signum: int, frame: Any) -> None:
    raise CpuTimeout


def within_cpu_time(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` allowed ``seconds`` of this process's CPU time, else :class:`CpuTimeout`.

    Time the process waits for a CPU does not count. Main thread only (a signal handler).

    >>> within_cpu_time(1.0, sum, [1, 2])
    3
    """
    old = signal.signal(signal.SIGPROF, _on_cpu_timeout)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def arm_kernel_backstop(seconds: float) -> None:
    """Let the kernel end this process (SIGXCPU) once it uses ``seconds`` more CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))


def _parse(answer: str, timeout: int | None) -> list[Any]:
    """math-verify's parse of a bare answer; prose with its own ``$...$`` is parsed as it is."""
    from math_verify import parse

    s = answer.strip()
    if s.startswith("$") and s.endswith("$") and "$" not in s.strip("$"):
        s = s.strip("$")
    wrapped = parse(f"${s}$", parsing_timeout=timeout) if "$" not in s else []
    if any(not isinstance(x, str) for x in wrapped):
        return wrapped
    raw = parse(s, parsing_timeout=timeout)
    if any(not isinstance(x, str) for x in raw):
        return raw
    return wrapped or raw


def _verify(pred: str, gold: str, timeout: int | None) -> bool:
    from math_verify import verify

    gold_parsed = _parse(gold, timeout)
    pred_parsed = _parse(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def verify_answers(pred: str, gold: str, timeout: int) -> bool:
    """math-verify's verdict on two bare answers within ``4 * timeout`` seconds of this process's
    CPU time. Main thread of a one-thread process: the worker (other threads' CPU time would count).

    >>> verify_answers("(x+1)^2", "x^2+2x+1", timeout=5)
    True
    """
    try:
        if not CPU_LIMITS:  # pragma: no cover - Windows: math-verify's own timeouts
            return _verify(pred, gold, timeout)
        return within_cpu_time(cpu_seconds(timeout), _verify, pred, gold, None)
    except (Exception, CpuTimeout):  # bad LaTeX, SymPy errors, out of time: not shown to be equal
        return False


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (import once, before saying ready)

    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            timeout = int(request["timeout"])
            if CPU_LIMITS:
                arm_kernel_backstop(cpu_seconds(timeout) + BACKSTOP_SECONDS)
            equal = verify_answers(str(request["pred"]), str(request["gold"]), timeout)
        except Exception:
            equal = False
        out.write(json.dumps({"equal": equal}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
