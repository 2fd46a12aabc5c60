"""Executor overhead and HTTP throughput figures (printed, never asserted).

    python benchmarks/runtime.py

1. Overhead per node: a 20-node chain and a 20-node fan-out run many times with an instant scripted
   LM and no cache; (wall time) / (nodes run), in microseconds. Target: < 1000 µs.
2. Throughput: 256 single-node calls through the real OpenAI-compatible client to the local test
   server with 50 ms injected latency, at concurrency 1, 8 and 64, as a fraction of the ideal
   (calls × latency ÷ concurrency). Target: ≥ 95% of ideal at 64.
"""

from __future__ import annotations

import asyncio
import platform
import statistics
import time

from flowbot.graph import LLMNode, MergeNode, Sketch, Workflow
from flowbot.lm import LMClient, RetryPolicy, ScriptedLM
from flowbot.lm.openai_compat import OpenAICompatProvider
from flowbot.lm.testing import OpenAITestServer
from flowbot.runtime import Executor, evaluate_examples


def chain(n: int) -> Workflow:
    nodes = [LLMNode(id=f"n{i}", reads=["q" if i == 0 else f"f{i - 1}"], writes=f"f{i}") for i in range(n)]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=[f"f{n - 1}"], nodes=nodes))


def fan_out(n: int) -> Workflow:
    nodes = [LLMNode(id=f"n{i}", reads=["q"], writes=f"f{i}") for i in range(n - 1)]
    nodes.append(MergeNode(id="join", reads=[f"f{i}" for i in range(n - 1)], writes="out", strategy="first"))
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["out"], nodes=nodes))


async def overhead_us(workflow: Workflow, runs: int = 200) -> float:
    executor = Executor(LMClient(ScriptedLM(default="ok")))  # no cache: every call reaches the provider
    await executor.run(workflow, {"q": "warm up"})
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(runs):
            await executor.run(workflow, {"q": f"q{i}"})
        samples.append((time.perf_counter() - start) / (runs * len(workflow.sketch.nodes)))
    return statistics.median(samples) * 1e6


async def throughput(base_url: str, concurrency: int, calls: int, latency: float) -> tuple[float, float]:
    provider = OpenAICompatProvider("bench", base_url, max_concurrency=concurrency)
    client = LMClient(provider, max_concurrency=concurrency, retry=RetryPolicy(max_attempts=1))
    wf = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[LLMNode(id="a", reads=["q"], writes="a")]))
    examples = [{"id": str(i), "q": f"question {i}"} for i in range(calls)]
    start = time.perf_counter()
    res = await evaluate_examples(Executor(client), wf, examples, lambda e, p: 1.0, concurrency=concurrency)
    wall = time.perf_counter() - start
    assert len(res.results) == calls and not any(r.error for r in res.results), "benchmark calls failed"
    ideal = calls * latency / concurrency
    return wall, ideal / wall


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("\n1. executor overhead per node (instant LM, no cache)")
    for name, wf in (("chain of 20", chain(20)), ("fan-out of 20", fan_out(20))):
        us = asyncio.run(overhead_us(wf))
        print(f"   {name:14s} {us:8.1f} µs/node   (target < 1000 µs)")
    print("\n2. throughput against the local OpenAI-compatible server, 50 ms latency, 256 calls")
    latency, calls = 0.05, 256
    with OpenAITestServer(reply="ok", latency_s=latency) as srv:
        asyncio.run(throughput(srv.base_url, 8, 16, latency))  # warm up connections
        for c in (1, 8, 64):
            n = 64 if c == 1 else calls
            wall, frac = asyncio.run(throughput(srv.base_url, c, n, latency))
            print(f"   concurrency {c:3d}: {n} calls in {wall:6.2f} s = {frac:6.1%} of ideal"
                  + ("   (target ≥ 95%)" if c == 64 else ""))


if __name__ == "__main__":
    main()
