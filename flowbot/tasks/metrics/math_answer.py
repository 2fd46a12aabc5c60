"""MATH answer equivalence with math-verify, plus a normalized-string / numeric fallback.

The gold answer is the last ``\\boxed{}`` of the reference solution. Two answers are equivalent when
math-verify (LaTeX -> SymPy, then symbolic / numeric comparison) says so, or when their normalized
strings or numeric values agree (for text answers math-verify cannot parse, e.g. ``\\text{Monday}``).

Timeouts. SymPy can run for a very long time on some inputs (``2^{2^{2^{30}}}``), so every check
math-verify makes runs in one of up to ``POOL_SIZE`` worker processes (``python _math_worker.py``,
JSON lines over pipes), from any thread. A worker limits each check's *CPU* time, not its wall time
(see ``_math_worker``): math-verify's own wall-clock alarms cut a check short when a busy machine
starved it, and a correct answer scored 0. A worker the kernel ends for overrunning its CPU time
(stuck in C code) is replaced, and the answer counts as not equivalent; one that gives no answer for
``WALL_BACKSTOP_SECONDS`` is killed and replaced likewise. Workers start on first use, are shared by
all threads, exit when their stdin closes, and are stopped at exit or by :func:`close_worker_pool`.
They are plain subprocesses, not ``multiprocessing`` ones, so the caller's main script is never
re-imported.

>>> math_equiv("0.5", "\\\\frac{1}{2}")
True
>>> math_score("... so the answer is $\\\\boxed{\\\\dfrac12}$.", "Thus $x = \\\\boxed{\\\\frac{1}{2}}$.")
1.0
"""

from __future__ import annotations

import atexit
import json
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from flowbot.scoring.extract import extract_answer, extract_boxed
from flowbot.tasks.metrics.numeric import parse_number

__all__ = ["close_worker_pool", "math_equiv", "math_gold", "math_score", "normalize_math_answer"]

#: worker processes, shared by every calling thread
POOL_SIZE = 2
#: wall seconds a new worker may take to start (Python + math-verify + SymPy imports: about 2 s of
#: CPU, but a minute or more on a machine whose cores a model holds; one that cannot start exits at once)
STARTUP_SECONDS = 600
#: wall seconds a caller waits for a verdict before killing the worker. The worker's CPU limits
#: end a long check; this only ends one that waits without computing, and is long so that a check
#: starved of the CPU on a busy machine still gets its verdict
WALL_BACKSTOP_SECONDS = 600

_WORKER_SCRIPT = str(Path(__file__).with_name("_math_worker.py"))

# --------------------------------------------------------------------------- string fallback

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def normalize_math_answer(answer: str) -> str:
    """A canonical string for an answer: no delimiters, spacing macros, ``\\left``/``\\right``,
    degree marks, dollar/percent signs, ``\\text{}`` wrappers, spaces or case; ``dfrac``/``tfrac``
    -> ``frac``; ``\\frac12`` -> ``\\frac{1}{2}``; ``x = 5`` -> ``5``; ``(C)`` -> ``c``.

    >>> normalize_math_answer(r"\\left( 3, \\dfrac{\\pi}{2} \\right)")
    '(3,\\\\frac{\\\\pi}{2})'
    """
    s = answer.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right) - 1:
            s = s[len(left) : len(s) - len(right)]
    s = re.sub(r"\\left|\\right|\\[!,;: ]|~", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|°|\\degree", "", s)
    for _ in range(3):  # nested \text{\textbf{...}}
        s = _TEXT_CMD.sub(r"\1", s)
    s = re.sub(r"\\?\$|\\?%", "", s)
    s = re.sub(r"\s+", "", s).lower().rstrip(".")
    s = re.sub(r"^[a-z]=(?=[^=])", "", s)  # "x=5" -> "5"
    choice = re.fullmatch(r"\(([a-z])\)", s)
    return choice.group(1) if choice else s


def _fallback_equal(pred: str, gold: str) -> bool:
    p, g = normalize_math_answer(pred), normalize_math_answer(gold)
    if p and p == g:
        return True
    x, y = parse_number(p), parse_number(g)
    return x is not None and x == y


# --------------------------------------------------------------------------- worker processes


class _Worker:
    """One ``_math_worker.py`` child process; used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, _WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, encoding="utf-8", bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, name="flowbot-math-worker", daemon=True).start()
        ready = self._reply(STARTUP_SECONDS)
        if not ready or not ready.get("ready"):
            self.kill()
            raise RuntimeError("the math-verify worker process did not start (is math-verify installed?)")

    def _pump(self) -> None:  # a reader thread, so waiting for a reply can time out portably
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _reply(self, wait: float) -> dict[str, Any] | None:
        try:
            line = self.lines.get(timeout=wait)
        except queue.Empty:
            return None
        try:
            return None if line is None else json.loads(line)
        except ValueError:  # not the protocol: treat the worker as broken
            return None

    def ask(self, pred: str, gold: str, timeout: int, wait: float | None = None) -> bool | None:
        """The worker's verdict, or None when it died or gave none within ``wait`` seconds."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "timeout": timeout}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        reply = self._reply(WALL_BACKSTOP_SECONDS if wait is None else wait)
        return None if reply is None else bool(reply.get("equal"))

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


class _WorkerPool:
    """Up to ``size`` workers, started on demand and shared by all threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[_Worker] = []
        self.live = 0  # workers alive or starting
        self.cond = threading.Condition()

    def acquire(self) -> _Worker:
        with self.cond:
            while not self.idle and self.live >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.live += 1
        try:
            return _Worker()
        except BaseException:
            with self.cond:
                self.live -= 1
                self.cond.notify()
            raise

    def release(self, worker: _Worker, healthy: bool) -> None:
        with self.cond:
            if healthy:
                self.idle.append(worker)
            else:
                self.live -= 1
            self.cond.notify()
        if not healthy:
            worker.kill()

    def close(self) -> None:
        with self.cond:
            idle, self.idle = self.idle, []
            self.live -= len(idle)
            self.cond.notify_all()
        for worker in idle:
            worker.kill()


#: the shared workers for calls from non-main threads (module state: created lazily, thread-safe)
_POOL = _WorkerPool(POOL_SIZE)


def close_worker_pool() -> None:
    """Stop the idle worker processes (they are restarted on demand; also done at exit)."""
    _POOL.close()


atexit.register(close_worker_pool)


def _verify_in_worker(pred: str, gold: str, timeout: int) -> bool:
    worker = _POOL.acquire()
    verdict = None
    try:
        verdict = worker.ask(pred, gold, timeout)
    finally:  # a worker that gave no verdict may still be busy: never reuse it
        _POOL.release(worker, healthy=verdict is not None)
    return verdict is True  # no verdict (out of time, died): not shown to be equal


def math_equiv(pred: str, gold: str, *, timeout: int = 5) -> bool:
    """True when the answer ``pred`` is mathematically equivalent to the gold answer ``gold``.

    Both are bare answers (e.g. the contents of ``\\boxed{}``); see :func:`math_score` for replies.
    ``timeout`` (whole seconds): the check may use ``4 * timeout`` seconds of CPU time, else it
    counts as not equivalent. Safe in any thread.
    """
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    if _fallback_equal(pred, gold):
        return True
    return _verify_in_worker(pred, gold, max(1, int(timeout)))


def math_gold(solution: str) -> str:
    """The gold answer of a MATH solution: its last ``\\boxed{}``, or the text itself if unboxed."""
    boxed = extract_boxed(solution)
    return boxed if boxed is not None else solution.strip()


def math_score(pred: str, gold: str, *, timeout: int = 5) -> float:
    """1.0 when the reply ``pred`` answers the MATH problem whose solution (or answer) is ``gold``.

    The reply's answer is its last ``\\boxed{}``, else what :func:`extract_answer` finds.
    """
    gold_answer = math_gold(gold)
    if not gold_answer:
        raise ValueError("MATH gold answer is empty")
    answer = extract_boxed(pred) or extract_answer(pred)
    return float(math_equiv(answer, gold_answer, timeout=timeout))
