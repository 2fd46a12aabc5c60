"""Sandbox start-up overhead: wall time of a trivial run (``pass``), per isolation level.

Run: ``python benchmarks/sandbox.py [runs]``. Prints figures only (no assertion).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from flowbot.tools.sandbox import SandboxUnavailable, run_python, sandbox_info


async def measure(isolation: str, runs: int) -> list[float]:
    await run_python("pass", isolation=isolation)  # warm-up (host probe, page cache)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        res = await run_python("pass", isolation=isolation)
        times.append((time.perf_counter() - start) * 1000)
        if not res.ok:
            raise RuntimeError(f"trivial run failed on {isolation}: {res.stderr[-500:]}")
    return times


async def concurrent(isolation: str, runs: int, width: int) -> float:
    start = time.perf_counter()
    sem = asyncio.Semaphore(width)

    async def one() -> None:
        async with sem:
            await run_python("pass", isolation=isolation)

    await asyncio.gather(*(one() for _ in range(runs)))
    return (time.perf_counter() - start) * 1000 / runs


async def main(runs: int) -> None:
    info = await sandbox_info()
    print(f"python {sys.version.split()[0]}; auto isolation = {info['isolation']} {info['reason']}".rstrip())
    print(f"{'isolation':<12}{'mean ms':>9}{'median':>9}{'min':>8}{'max':>8}{'ms/run x4':>11}")
    for isolation in ("namespaces", "bwrap", "process"):
        try:
            times = await measure(isolation, runs)
        except SandboxUnavailable as exc:
            print(f"{isolation:<12} unavailable: {exc}")
            continue
        par = await concurrent(isolation, runs, 4)
        print(f"{isolation:<12}{statistics.mean(times):9.1f}{statistics.median(times):9.1f}"
              f"{min(times):8.1f}{max(times):8.1f}{par:11.1f}")
    print(f"({runs} sequential trivial runs each; 'ms/run x4' = wall time per run with 4 in flight)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
