"""MATH answer equivalence (math-verify + fallback), gold extraction, and thread safety."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flowbot.tasks.metrics import math_equiv, math_gold, math_score, normalize_math_answer
import flowbot.tasks.metrics._math_worker as worker_module
import flowbot.tasks.metrics.math_answer as me

from .metrics_data import read_jsonl

GOLD_POINT = r"\left( 3, \frac{\pi}{2} \right)"

EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac12", r"\frac{1}{2}"),
    ("1/2", r"\frac12"),
    (r"(3, \frac{\pi}{2})", GOLD_POINT),
    (r"(3,\pi/2)", GOLD_POINT),
    ("x=5", "5"),
    ("x = 5", "5"),
    ("90", r"90^\circ"),
    (r"90^{\circ}", "90"),
    ("C", r"\text{(C)}"),
    ("(C)", r"\text{(C)}"),
    ("Monday", r"\text{Monday}"),
    ("(x+1)^2", "x^2+2x+1"),
    (r"[-2,7)", r"[-2, 7)"),
    (r"\frac{\sqrt2}{2}", r"\frac{\sqrt{2}}{2}"),
    ("18.9", r"\$18.90"),
    ("50", r"50\%"),
    ("1,000", "1000"),
    (r"$\frac{14}{3}$", r"\frac{14}{3}"),
]

DIFFERENT = [
    ("3", "4"),
    ("0.3", r"\frac{1}{2}"),
    (r"(\frac{\pi}{2}, 3)", GOLD_POINT),  # a point's coordinates are ordered
    ("D", r"\text{(C)}"),
    (r"(-2,7)", r"[-2,7)"),
    ("x^2+2x", "x^2+2x+1"),
    ("", "5"),
    ("5", ""),
]


@pytest.mark.parametrize("pred, gold", EQUIVALENT)
def test_equivalent_answers(pred: str, gold: str) -> None:
    assert math_equiv(pred, gold) is True


@pytest.mark.parametrize("pred, gold", DIFFERENT)
def test_different_answers(pred: str, gold: str) -> None:
    assert math_equiv(pred, gold) is False


def test_normalized_strings() -> None:
    assert normalize_math_answer(GOLD_POINT) == r"(3,\frac{\pi}{2})"
    assert normalize_math_answer(r"\text{(C)}") == "c"
    assert normalize_math_answer(r"x = \dfrac12") == r"\frac{1}{2}"
    assert normalize_math_answer(r"$45^\circ$") == "45"


def test_gold_is_last_boxed_of_solution() -> None:
    solution = r"First $\boxed{2}$ is wrong; in fact $x = \boxed{\frac{1}{2}}$."
    assert math_gold(solution) == r"\frac{1}{2}"
    assert math_gold(r"\frac{14}{3}") == r"\frac{14}{3}"  # a bare answer (MATH-500 "answer")


def test_math_score_on_replies() -> None:
    solution = r"Thus $x = \boxed{\frac{1}{2}}$."
    assert math_score(r"... so the answer is $\boxed{\dfrac12}$.", solution) == 1.0
    assert math_score("We get x = 0.5.\nAnswer: 0.5", solution) == 1.0
    assert math_score(r"The answer is $(3, \frac{\pi}{2})$.", rf"so $\boxed{{{GOLD_POINT}}}$") == 1.0
    assert math_score(r"so $\boxed{\frac{1}{3}}$", solution) == 0.0
    assert math_score("I don't know", solution) == 0.0
    with pytest.raises(ValueError, match="empty"):
        math_score("1", r"\boxed{}")


def _restyle(answer: str) -> str:
    """Write an answer the way a model might: integer fractions as a/b, dfrac, \\left( \\right)."""
    styled = re.sub(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}", r"\1/\2", answer)
    styled = styled.replace(r"\left", "").replace(r"\right", "").replace(r"\frac", r"\dfrac")
    styled = styled.replace("(", r"\left(").replace(")", r"\right)")
    return styled if re.search(r"[a-z=]", answer) else f"x = {styled}"


def test_math500_golds_match_their_solutions_and_restyled_replies() -> None:
    rows = read_jsonl("math/math500/test.jsonl")
    for row in rows:  # the "answer" field and the solution's last \boxed{} agree everywhere
        assert math_equiv(row["answer"], math_gold(row["solution"])), row["unique_id"]
    restyled = [row for row in rows if "frac" in row["answer"]][:60]
    needs_sympy = 0
    for row in restyled:
        answer = _restyle(row["answer"])
        needs_sympy += normalize_math_answer(answer) != normalize_math_answer(row["answer"])
        reply = f"Working...\nThe final answer is $\\boxed{{{answer}}}$."
        assert math_score(reply, row["solution"]) == 1.0, (row["unique_id"], reply)
    assert needs_sympy >= 30  # most of them are not equal as strings: math-verify decided


# --------------------------------------------------------------------------- threads and timeouts

MIXED = [("0.5", r"\frac{1}{2}", True), (r"(3,\pi/2)", GOLD_POINT, True), ("3", "4", False),
         ("(x+1)^2", "x^2+2x+1", True), ("x^2", "x^3", False)]


def test_works_from_worker_threads() -> None:
    assert threading.current_thread() is threading.main_thread()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: math_equiv(c[0], c[1]), MIXED * 2))
    assert results == [c[2] for c in MIXED * 2]


async def test_works_from_asyncio_to_thread() -> None:
    results = await asyncio.gather(*(asyncio.to_thread(math_equiv, p, g) for p, g, _ in MIXED))
    assert results == [c[2] for c in MIXED]


def test_pathological_expression_times_out_as_not_equal() -> None:
    tower = r"2^{2^{2^{30}}}"
    assert math_equiv("5", tower, timeout=1) is False  # main thread: the worker's CPU limit
    with ThreadPoolExecutor(1) as pool:  # worker thread: the same
        assert pool.submit(math_equiv, "5", tower, timeout=1).result() is False
        assert pool.submit(math_equiv, "0.5", r"\frac{1}{2}").result() is True


def test_stuck_worker_is_killed_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a worker that starts but never answers stands for one stuck in C code past its alarms
    stuck = tmp_path / "stuck_worker.py"
    stuck.write_text("import sys, time\nprint('{\"ready\": true}', flush=True)\nsys.stdin.readline()\ntime.sleep(600)\n")
    pool = me._WorkerPool(1)
    monkeypatch.setattr(me, "_WORKER_SCRIPT", str(stuck))
    worker = pool.acquire()
    assert worker.ask("1", "2", timeout=1, wait=0.5) is None
    pool.release(worker, healthy=False)
    assert worker.proc.poll() is not None and pool.live == 0
    monkeypatch.setattr(me, "_WORKER_SCRIPT", str(Path(me.__file__).with_name("_math_worker.py")))
    fresh = pool.acquire()
    assert fresh.ask("0.5", r"\frac{1}{2}", timeout=5) is True
    pool.release(fresh, healthy=True)
    pool.close()
    assert fresh.proc.wait(timeout=10) is not None and pool.live == 0


def test_worker_that_cannot_start_raises_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken_worker.py"
    broken.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(me, "_WORKER_SCRIPT", str(broken))
    pool = me._WorkerPool(1)
    with pytest.raises(RuntimeError, match="did not start"):
        pool.acquire()
    assert pool.live == 0


def test_worker_script_runs_standalone(tmp_path: Path) -> None:
    # the worker is started by path with this interpreter; it must not need flowbot on sys.path
    import subprocess

    script = Path(me.__file__).with_name("_math_worker.py")
    proc = subprocess.run([sys.executable, str(script)], input='{"pred": "1/2", "gold": "0.5", "timeout": 5}\n',
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.splitlines() == ['{"ready": true}', '{"equal": true}']


# --------------------------------------------------------------------------- CPU time, not wall time


def test_cpu_limit_ignores_time_spent_waiting() -> None:
    # a check starved of the CPU on a busy machine waits without computing: that must not end it
    # (math-verify's own wall-clock alarm did, and a correct answer scored 0)
    assert worker_module.within_cpu_time(0.3, lambda: time.sleep(0.8) or "done") == "done"


def test_cpu_limit_ends_a_check_that_computes_too_long() -> None:
    def spin() -> None:
        while True:
            pass

    started = time.process_time()
    with pytest.raises(worker_module.CpuTimeout):
        worker_module.within_cpu_time(0.3, spin)
    # it computed for a good part of its limit: the kernel charges the profiling timer a whole tick to
    # whichever task holds the CPU at the tick, so on a busy machine it can expire up to ~40% early
    # (measured: 0.63 s of CPU for a 1 s limit next to a run holding both cores)
    assert time.process_time() - started >= 0.1


def test_cpu_timeout_is_not_swallowed_by_except_exception() -> None:
    # math-verify catches Exception everywhere: a timeout it swallowed would compute on, unlimited
    def careless() -> str:
        try:
            while True:
                pass
        except Exception:
            return "swallowed"

    with pytest.raises(worker_module.CpuTimeout):
        worker_module.within_cpu_time(0.2, careless)


def test_kernel_ends_a_worker_stuck_in_c_code(tmp_path: Path) -> None:
    # catastrophic regex backtracking runs in C, where no Python signal handler gets to run
    import signal
    import subprocess

    script = Path(me.__file__).with_name("_math_worker.py")
    code = (f"import re, runpy; w = runpy.run_path({str(script)!r}); w['arm_kernel_backstop'](1); "
            "re.match(r'(a+)+$', 'a' * 60 + 'b'); print('finished')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGXCPU and "finished" not in proc.stdout


def test_worker_ended_by_the_kernel_counts_as_not_equal_and_is_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dying = tmp_path / "dying_worker.py"
    dying.write_text("import os, signal, sys\nprint('{\"ready\": true}', flush=True)\n"
                     "sys.stdin.readline()\nos.kill(os.getpid(), signal.SIGXCPU)\n")
    monkeypatch.setattr(me, "_WORKER_SCRIPT", str(dying))
    monkeypatch.setattr(me, "_POOL", me._WorkerPool(1))
    assert math_equiv("(3,\\pi/2)", GOLD_POINT) is False
    assert me._POOL.live == 0 and not me._POOL.idle
    monkeypatch.setattr(me, "_WORKER_SCRIPT", str(Path(me.__file__).with_name("_math_worker.py")))
    assert math_equiv("(3,\\pi/2)", GOLD_POINT) is True
    me._POOL.close()
