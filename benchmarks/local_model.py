"""Speed of the embedded local models on this machine.

Prints the CPU, then for each model: load time, prompt and generation tokens per second, the time
of one chain-of-thought GSM8K question, and what prompt-prefix reuse saves. With ``--engines`` it
also compares llama-cpp-python (in-process, one sequence at a time; what FlowBot uses) with
xllamacpp (llama.cpp's server with parallel slots and continuous batching) at 1 and 4 requests in
flight. With ``--grammar`` it compares decoding under a grammar compiled from a JSON schema
(structured output) with free decoding of the same prompt. The CPU is shared with anything else
running, so the share of CPU used by other processes during each measurement is printed too;
numbers taken while it is high are not representative.

    python benchmarks/local_model.py                              # both models, llama-cpp-python
    python benchmarks/local_model.py --models qwen2.5-coder-0.5b --engines \\
        --xllamacpp-path /tmp/xl --questions 8                     # + the engine comparison
    python benchmarks/local_model.py --models qwen2.5-coder-1.5b --grammar-only --grammar 4

GSM8K questions come from ``<data-dir>/gsm8k/official/{train,test}.jsonl``, the benchmark layout of
``flowbot --data-dir`` (``--data-dir DIR``, else ``$FLOWBOT_DATA_DIR``); without them every
measurement uses one built-in question.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flowbot.lm import LMClient
from flowbot.lm.base import LMRequest
from flowbot.lm.local import LlamaCppProvider, pull, unload_all
from flowbot.lm.local.engine import compile_grammar, physical_cores
from flowbot.lm.schema import schema_text
from flowbot.lm.structured import parse_reply
from flowbot.tasks.benchmarks import find_data_root

#: the benchmark data root (``--data-dir``; None: $FLOWBOT_DATA_DIR or the bundled sample)
DATA_DIR: Path | None = None
_FALLBACK_QUESTION = {
    "question": "A baker makes 24 muffins. She sells 3 boxes of 5 muffins and gives 4 muffins to a "
    "neighbour. How many muffins does she have left?",
    "answer": "#### 5",
}
COT = "Solve the problem step by step, then give the final answer on its own line as 'Answer: <number>'."


# -- machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        pass
    return []


class CpuShare:
    """Share of the machine's CPU time used by *other* processes over an interval (Linux)."""

    def __enter__(self) -> "CpuShare":
        self.t0, self.total0, self.idle0 = time.monotonic(), *self._system()
        self.mine0 = self._mine()
        return self

    def __exit__(self, *exc: object) -> None:
        total, idle = self._system()
        busy = (total - self.total0) - (idle - self.idle0)
        ticks = os.sysconf("SC_CLK_TCK")
        mine = (self._mine() - self.mine0) * ticks
        self.others = max(0.0, (busy - mine) / max(1, total - self.total0))

    @staticmethod
    def _system() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            return sum(fields), fields[3] + fields[4]
        except OSError:
            return 1, 1

    @staticmethod
    def _mine() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def wait_for_quiet(max_wait: float) -> None:
    """Wait (up to ``max_wait`` seconds) until the 1-minute load average drops below 0.5."""
    deadline = time.monotonic() + max_wait
    while hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5 and time.monotonic() < deadline:
        time.sleep(5)


# -- data ------------------------------------------------------------------------------------


def gsm8k(split: str, n: int) -> list[dict[str, str]]:
    root = find_data_root("gsm8k", DATA_DIR)
    path = root / "gsm8k" / "official" / f"{split}.jsonl" if root else None
    if path is None or not path.exists():
        return [_FALLBACK_QUESTION] * n
    rows = []
    with open(path) as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def gold(row: dict[str, str]) -> str:
    return row["answer"].split("####")[-1].strip().replace(",", "")


def extract(text: str) -> str:
    for pattern in (r"Answer:\s*\$?(-?[\d,]*\.?\d+)", r"\\boxed\{\s*\$?(-?[\d,]*\.?\d+)"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].replace(",", "")
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else ""


def cot_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": COT}, {"role": "user", "content": question}]


def demos_prefix(k: int, salt: str = "") -> str:
    parts = [f"Instructions{salt}: solve grade-school math problems; reason briefly, then answer."]
    for row in gsm8k("train", k + 20)[20 : 20 + k] if salt else gsm8k("train", k):
        parts.append(f"Question: {row['question']}\nReasoning: {row['answer'].split('####')[0].strip()}\nAnswer: {gold(row)}")
    return "\n\n".join(parts)


# -- llama-cpp-python ------------------------------------------------------------------------


@dataclass
class Delta:
    prompt_tokens: int
    evaluated: int
    completion_tokens: int
    prompt_s: float
    gen_s: float
    wall: float


def measured(provider: LlamaCppProvider, fn: Callable[[], Any]) -> tuple[Any, Delta]:
    before = provider.stats
    b = (before.prompt_tokens, before.prompt_tokens_evaluated, before.completion_tokens,
         before.prompt_seconds, before.generation_seconds)  # fmt: skip
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    s = provider.stats
    return out, Delta(s.prompt_tokens - b[0], s.prompt_tokens_evaluated - b[1], s.completion_tokens - b[2],
                      s.prompt_seconds - b[3], s.generation_seconds - b[4], wall)  # fmt: skip


def call(provider: LlamaCppProvider, messages: list[dict[str, str]], **kw: Any) -> str:
    return provider.complete_sync(LMRequest.of(messages, **kw)).text


def bench_llama(model: str, questions: int) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": "llama-cpp-python", "model": model}
    pull(model)
    with CpuShare() as share:
        t = time.perf_counter()
        provider = LlamaCppProvider(model).load()
        out["load_s"] = time.perf_counter() - t
        s = provider.settings()
        out["settings"] = {"n_threads": s.n_threads, "n_ctx": s.n_ctx, "n_batch": s.n_batch, "flash_attn": s.flash_attn}

        # prompt speed: a long prompt sharing nothing with earlier ones
        words = " ".join(f"w{i}x{(i * 7919) % 1000}" for i in range(130))
        _, d = measured(provider, lambda: call(provider, [{"role": "user", "content": words}], max_tokens=1))
        out["prompt_tokens"], out["prompt_tok_s"] = d.evaluated, d.evaluated / d.prompt_s

        # generation speed
        msg = [{"role": "user", "content": "Count from 1 to 200, separated by commas."}]
        _, d = measured(provider, lambda: call(provider, msg, max_tokens=128))
        out["gen_tokens"], out["gen_tok_s"] = d.completion_tokens, d.completion_tokens / d.gen_s

        # one chain-of-thought GSM8K question
        row = gsm8k("test", 1)[0]
        text, d = measured(provider, lambda: call(provider, cot_messages(row["question"]), max_tokens=512))
        out["cot"] = {"seconds": d.wall, "prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
                      "predicted": extract(text), "gold": gold(row)}  # fmt: skip
    out["others_cpu_share"] = share.others
    out["prefix"] = bench_prefix(provider)
    unload_all()
    out["prefix_cache"] = bench_prefix_cache(model)
    if questions:
        out["throughput"] = {c: throughput_llama(model, questions, c) for c in (1, 4)}
    return out


def bench_prefix(provider: LlamaCppProvider) -> dict[str, Any]:
    """Same long prefix, different question: how much of the second prompt is recomputed."""
    prefix = demos_prefix(8)
    rows = gsm8k("test", 3)
    msgs = [[{"role": "system", "content": prefix}, {"role": "user", "content": r["question"]}] for r in rows]
    call(provider, [{"role": "user", "content": "unrelated warm-up"}], max_tokens=1)
    with CpuShare() as share:
        _, cold = measured(provider, lambda: call(provider, msgs[0], max_tokens=1))
        _, warm = measured(provider, lambda: call(provider, msgs[1], max_tokens=1))
    return {
        "prompt_tokens": cold.prompt_tokens,
        "cold": {"evaluated": cold.evaluated, "seconds": cold.wall},
        "warm": {"evaluated": warm.evaluated, "seconds": warm.wall},
        "others_cpu_share": share.others,
    }


def bench_prefix_cache(model: str) -> dict[str, Any]:
    """Two prefixes alternating (like two workflow nodes): without and with KV snapshots."""
    rows = gsm8k("test", 4)
    prefixes = [demos_prefix(6), demos_prefix(6, salt=" (B)")]
    order = [[{"role": "system", "content": prefixes[i % 2]}, {"role": "user", "content": rows[i // 2]["question"]}]
             for i in range(8)]  # fmt: skip
    result = {}
    for label, mb in (("without snapshots", 0), ("with snapshots (prefix_cache_mb=512)", 512)):
        provider = LlamaCppProvider(model, prefix_cache_mb=mb).load()
        with CpuShare() as share:
            _, d = measured(provider, lambda: [call(provider, m, max_tokens=1) for m in order])
        result[label] = {"seconds": d.wall, "evaluated": d.evaluated, "prompt_tokens": d.prompt_tokens,
                         "others_cpu_share": share.others}  # fmt: skip
        unload_all()
    return result


def throughput_llama(model: str, questions: int, concurrency: int) -> dict[str, Any]:
    rows = gsm8k("test", questions)
    provider = LlamaCppProvider(model).load()
    client = LMClient(provider, max_concurrency=concurrency)

    async def run() -> list[Any]:
        return await asyncio.gather(*(client.complete(cot_messages(r["question"]), max_tokens=384) for r in rows))

    with CpuShare() as share:
        t = time.perf_counter()
        results = asyncio.run(run())
        wall = time.perf_counter() - t
    unload_all()
    gen = sum(r.usage.completion_tokens for r in results)
    correct = sum(extract(r.text) == gold(row) for r, row in zip(results, rows))
    return {"questions_per_min": 60 * len(rows) / wall, "gen_tok_s": gen / wall, "seconds": wall,
            "correct": correct, "others_cpu_share": share.others}  # fmt: skip


# -- grammar-constrained vs free decoding -------------------------------------------------------

#: a reply shaped like FlowBot's structured calls: short bounded reasoning first, then the answer
JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 600},
        "answer": {"type": "integer"},
    },
    "required": ["reasoning", "answer"],
    "additionalProperties": False,
}
JSON_ASK = ("Solve the problem. Reply with only a JSON object: "
            '{"reasoning": "<brief step-by-step reasoning>", "answer": <the final number>}.')


def bench_grammar(model: str, questions: int) -> dict[str, Any]:
    """The same JSON-asking prompts decoded freely and under the schema's grammar (greedy)."""
    pull(model)
    provider = LlamaCppProvider(model).load()
    t = time.perf_counter()
    compile_grammar(schema_text(JSON_SCHEMA))
    out: dict[str, Any] = {"model": model, "compile_s": time.perf_counter() - t, "questions": questions}
    rows = gsm8k("test", questions)
    asks = [[{"role": "system", "content": JSON_ASK}, {"role": "user", "content": r["question"]}] for r in rows]
    for label, schema in (("free", None), ("grammar", JSON_SCHEMA)):
        call(provider, [{"role": "user", "content": "warm-up"}], max_tokens=2, schema=schema)
        with CpuShare() as share:
            texts, d = measured(provider, lambda: [call(provider, m, max_tokens=400, schema=schema) for m in asks])
        parsed = [parse_reply(text, JSON_SCHEMA) for text in texts]
        out[label] = {
            "gen_tok_s": d.completion_tokens / d.gen_s if d.gen_s else 0.0,
            "s_per_call": d.wall / len(asks),
            "gen_tokens_per_call": d.completion_tokens / len(asks),
            "gen_s_per_call": d.gen_s / len(asks),
            "prompt_s_per_call": d.prompt_s / len(asks),
            "valid_json": sum(p.error is None for p in parsed),
            "correct": sum(p.error is None and str(p.value["answer"]) == gold(r) for p, r in zip(parsed, rows)),
            "others_cpu_share": share.others,
        }
    unload_all()
    return out


def report_grammar(results: list[dict[str, Any]]) -> None:
    for r in results:
        free, con = r["free"], r["grammar"]
        print(f"== {r['model']}: grammar-constrained vs free decoding, {r['questions']} GSM8K questions asking "
              f"for JSON (greedy; grammar compiled in {r['compile_s'] * 1000:.0f} ms) ==")
        for label, v in (("free   ", free), ("grammar", con)):
            print(f"  {label}  {v['gen_tok_s']:.1f} generated tok/s, {v['s_per_call']:.1f} s/call "
                  f"({v['gen_tokens_per_call']:.0f} tokens, {v['gen_s_per_call']:.1f} s generating, "
                  f"{v['prompt_s_per_call']:.1f} s reading the prompt); valid JSON {v['valid_json']}/{r['questions']}, "
                  f"correct {v['correct']} (others' CPU {v['others_cpu_share']:.0%})")
        if free["gen_tok_s"] and con["gen_tok_s"]:
            print(f"  time per generated token under the grammar: {free['gen_tok_s'] / con['gen_tok_s']:.2f}x free decoding")


# -- xllamacpp (run in a child process: two copies of ggml must not share one process) --------


def throughput_xllamacpp(model: str, questions: int, concurrency: int, xl_path: str | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_xllamacpp-worker", model, str(questions), str(concurrency)]
    env = dict(os.environ)
    if xl_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (xl_path, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def _xllamacpp_worker(model: str, questions: int, concurrency: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = str(pull(model, progress=False))
    params.n_parallel = concurrency
    params.n_ctx = 4096 * concurrency  # llama-server splits the context between its slots
    params.cpuparams.n_threads = physical_cores()
    params.cpuparams_batch.n_threads = physical_cores()
    t = time.perf_counter()
    server = xlc.Server(params)
    load_s = time.perf_counter() - t
    rows = gsm8k("test", questions)

    def ask(row: dict[str, str], max_tokens: int = 384) -> dict[str, Any]:
        body = {"messages": cot_messages(row["question"]), "max_tokens": max_tokens, "temperature": 0, "seed": 0}
        return server.handle_chat_completions(body)

    # single-stream speeds from llama-server's own timings
    words = " ".join(f"w{i}x{(i * 7919) % 1000}" for i in range(130))
    p = server.handle_chat_completions({"messages": [{"role": "user", "content": words}], "max_tokens": 1})
    g = server.handle_chat_completions(
        {"messages": [{"role": "user", "content": "Count from 1 to 200, separated by commas."}], "max_tokens": 128, "temperature": 0}
    )
    with CpuShare() as share:
        t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(ask, rows))
        wall = time.perf_counter() - t
    gen = sum(r["usage"]["completion_tokens"] for r in results)
    correct = sum(extract(r["choices"][0]["message"]["content"]) == gold(row) for r, row in zip(results, rows))

    # reproducibility: the same request alone twice, and alongside other requests
    def text(row: dict[str, str]) -> str:
        return ask(row, 200)["choices"][0]["message"]["content"]

    probe = rows[:concurrency] if concurrency > 1 else rows[:4]
    alone = [text(r) for r in probe]
    again = [text(r) for r in probe]
    with ThreadPoolExecutor(concurrency) as pool:
        together = list(pool.map(text, probe))
    print(json.dumps({
        "same_text_repeated": sum(a == b for a, b in zip(alone, again)), "probes": len(probe),
        "same_text_concurrent": sum(a == b for a, b in zip(alone, together)),
        "load_s": load_s, "prompt_tok_s": p["timings"]["prompt_per_second"],
        "gen_tok_s_single": g["timings"]["predicted_per_second"],
        "questions_per_min": 60 * len(rows) / wall, "gen_tok_s": gen / wall, "seconds": wall,
        "correct": correct, "others_cpu_share": share.others,
    }))  # fmt: skip


# -- report ----------------------------------------------------------------------------------


def same_text_llama(model: str, probes: int = 4) -> dict[str, int]:
    """The same greedy request cold, then again with its prompt cached: identical texts?"""
    provider = LlamaCppProvider(model).load()
    same = 0
    for row in gsm8k("test", probes):
        call(provider, [{"role": "user", "content": "unrelated " * 300}], max_tokens=1)
        cold = call(provider, cot_messages(row["question"]), max_tokens=200)
        same += cold == call(provider, cot_messages(row["question"]), max_tokens=200)
    unload_all()
    return {"same_text_repeated": same, "probes": probes}


CHOICE = """\
Engine choice: llama-cpp-python in-process (LlamaCppProvider).
  xllamacpp batches requests (about 2x the questions/min at 4 in flight on this machine) but its
  texts change with what else is running and with its prompt cache (see "same text" above), so the
  same seed would not give the same text and paired comparisons of workflows would carry engine
  noise. llama-cpp-python with block-aligned prefix reuse gives bit-identical texts whatever ran
  before, reads prompts faster single-stream (optimizer prompts are long and unique), and reuses
  shared prefixes (demos) across calls and alternating nodes."""


def report(results: list[dict[str, Any]], engines: dict[str, dict[int, dict[str, Any]]]) -> None:
    print()
    for r in results:
        cot, pre, sc = r["cot"], r["prefix"], r["prefix_cache"]
        print(f"== {r['model']} (llama-cpp-python, {', '.join(f'{k}={v}' for k, v in r['settings'].items())}) ==")
        print(f"  load                  {r['load_s']:.1f} s")
        print(f"  prompt                {r['prompt_tok_s']:.0f} tok/s ({r['prompt_tokens']} tokens)")
        print(f"  generation            {r['gen_tok_s']:.1f} tok/s ({r['gen_tokens']} tokens)")
        print(f"  CoT GSM8K question    {cot['seconds']:.1f} s ({cot['prompt_tokens']} prompt + "
              f"{cot['completion_tokens']} generated tokens; answer {cot['predicted']!r}, gold {cot['gold']!r})")
        print(f"  others' CPU share     {r['others_cpu_share']:.0%}")
        print(f"  prefix reuse          {pre['prompt_tokens']}-token prompt: cold {pre['cold']['seconds']:.2f} s "
              f"({pre['cold']['evaluated']} tokens computed), same prefix + new question "
              f"{pre['warm']['seconds']:.2f} s ({pre['warm']['evaluated']} computed: whole 256-token "
              f"blocks are reused, so the text is the same as a cold run's)")
        for label, v in sc.items():
            print(f"  two alternating prefixes, 8 calls, {label}: {v['seconds']:.1f} s "
                  f"({v['evaluated']} of {v['prompt_tokens']} prompt tokens computed)")
        for c, v in r.get("throughput", {}).items():
            print(f"  GSM8K CoT, {c} in flight: {v['questions_per_min']:.1f} questions/min, "
                  f"{v['gen_tok_s']:.1f} generated tok/s, {v['correct']} correct (others' CPU {v['others_cpu_share']:.0%})")
    for model, by_c in engines.items():
        print(f"== {model} (xllamacpp: llama.cpp server, parallel slots, continuous batching) ==")
        for c, v in by_c.items():
            if "error" in v:
                print(f"  {c} in flight: unavailable ({v['error']})")
                continue
            print(f"  {c} in flight: {v['questions_per_min']:.1f} questions/min, {v['gen_tok_s']:.1f} generated tok/s, "
                  f"{v['correct']} correct; single-stream prompt {v['prompt_tok_s']:.0f} tok/s, "
                  f"generation {v['gen_tok_s_single']:.1f} tok/s (others' CPU {v['others_cpu_share']:.0%})")
            print(f"    same text when a request is repeated: {v['same_text_repeated']}/{v['probes']}; "
                  f"alone vs. alongside others: {v['same_text_concurrent']}/{v['probes']}")
    for r in results:
        if "same_text" in r:
            v = r["same_text"]
            print(f"== {r['model']} (llama-cpp-python): same text cold vs. prompt cached: "
                  f"{v['same_text_repeated']}/{v['probes']} ==")
    if engines:
        print(CHOICE)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_xllamacpp-worker":
        _xllamacpp_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--questions", type=int, default=0, help="GSM8K questions per throughput run (0 = skip)")
    ap.add_argument("--engines", action="store_true", help="also measure xllamacpp (needs it importable)")
    ap.add_argument("--xllamacpp-path", help="directory holding the xllamacpp package (pip install --target)")
    ap.add_argument("--wait-quiet", type=float, default=0, help="wait up to N s for the machine to go idle")
    ap.add_argument("--grammar", type=int, default=0, metavar="N",
                    help="also compare grammar-constrained with free decoding on N GSM8K questions (0 = skip)")
    ap.add_argument("--grammar-only", action="store_true", help="only the grammar comparison (default N: 4)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--data-dir", type=Path, help="benchmark data root laid out as DIR/gsm8k/official/*.jsonl, "
                    "as for flowbot --data-dir (default: $FLOWBOT_DATA_DIR)")
    args = ap.parse_args()
    global DATA_DIR
    DATA_DIR = args.data_dir
    if args.grammar_only and not args.grammar:
        args.grammar = 4
    print(f"CPU: {cpu_model()} | {physical_cores()} physical cores | {' '.join(cpu_flags())} | "
          f"load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else f"CPU: {cpu_model()}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results, engines, grammar = [], {}, []
    for model in models:
        wait_for_quiet(args.wait_quiet)
        if args.grammar:
            grammar.append(bench_grammar(model, args.grammar))
        if args.grammar_only:
            continue
        results.append(bench_llama(model, args.questions))
        if args.engines:
            results[-1]["same_text"] = same_text_llama(model)
        if args.engines and args.questions:
            engines[model] = {c: throughput_xllamacpp(model, args.questions, c, args.xllamacpp_path) for c in (1, 4)}
    report(results, engines)
    report_grammar(grammar)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "results": results, "engines": engines,
                                               "grammar": grammar}, indent=2))


if __name__ == "__main__":
    main()
