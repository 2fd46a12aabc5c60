"""The table of a protocol run (issue 16): every method on the same test items, paired.

    python results/protocol.py results/drop-1.5b --task drop --model qwen2.5-coder-1.5b
    python results/protocol.py results/gsm8k-0.5b --task gsm8k --model qwen2.5-coder-0.5b \\
        --optimizer-model qwen2.5-coder-1.5b

Single-call baselines are read from ``<dir>/baselines/test-<name>.json`` (written by ``flowbot eval``);
each search method's best workflow is re-scored on the test items from its run directory's cache
(``<dir>/<method>/``), which pays nothing and loads no model when the run is complete — so printing
the table again is a check that the committed run reproduces. Differences are paired on the same
items, with a seeded paired bootstrap interval for graded scores (F1) and an exact one for 0/1
scores. Also writes ``<dir>/pareto.png``: test score against tokens per test example.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
from pathlib import Path
from typing import Any

BASELINES = ("io", "cot", "sc3", "react", "react-v2")
METHODS = ("inner-only", "aflow", "flowbot", "flowbot-v2", "flowbot-v3", "feedback-global",
           "inner-only-v2", "aflow-v2", "flowbot-v4", "inner-only-v3", "flowbot-v5", "flowbot-teacher",
           "inner-only-teacher")
LABELS = {"io": "IO", "cot": "CoT (the seed)", "sc3": "CoT-SC (3 samples)", "react": "ReAct",
          "react-v2": "ReAct, tool calls read leniently",
          "inner-only": "prompt-only (inner loop)", "aflow": "AFlow-style search",
          "flowbot": "FlowBot (bilevel), run 1", "flowbot-v2": "FlowBot, run 2", "flowbot-v3": "FlowBot, run 3",
          "feedback-global": "FlowBot run 3, --feedback global",
          "inner-only-v2": "prompt-only, alpha 0.25", "aflow-v2": "AFlow-style search, alpha 0.25",
          "flowbot-v4": "FlowBot, run 4 (alpha 0.25)",
          "inner-only-v3": "prompt-only, alpha 0.25, demo bootstrap 10",
          "flowbot-v5": "FlowBot, run 5 (alpha 0.25, demo bootstrap 10)",
          "flowbot-teacher": "FlowBot, demos from the optimizer model as teacher",
          "inner-only-teacher": "prompt-only, demos from the optimizer model as teacher"}


def baseline_row(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    from flowbot.runtime.batch import BatchResult, ExampleResult

    r = json.loads(path.read_text())["results"][0]
    scores = {e["id"]: e["score"] for e in r["examples"]}
    # recomputed, not read: evaluations written before the check existed carry no warnings
    stuck = BatchResult([ExampleResult(e["id"], {}, e["prediction"] or {}, e["score"]) for e in r["examples"]],
                        requested=r["n"]).stuck_output()
    return {"scores": scores, "score": r["score"], "n": r["n"], "calls_per_example": r["calls"] / r["n"],
            "tokens_per_example": r["tokens"] / r["n"], "wall_s": r["wall_s"], "search": None, "stuck": stuck}


async def method_row(run: Path, task: Any, n_test: int, model: str, optimizer_model: str | None) -> dict[str, Any] | None:
    import flowbot
    from flowbot.lm.cache import ResponseCache

    summary_path = run / "summary.json"
    if not summary_path.exists():
        return None
    s = json.loads(summary_path.read_text())
    if not s.get("test"):
        return None
    cache = ResponseCache(run / "cache.sqlite")
    try:
        res = await flowbot.aevaluate(str(run / "best.json"), task, split="test", limit=n_test, cache=cache,
                                      model=model, concurrency=1)
    finally:
        cache.close()
    paid = res.usage.get("task", {}).get("calls", 0)
    roles = s.get("usage_by_role", {})
    phases = s.get("usage_by_phase", {})
    test_calls = phases.get("test", {}).get("calls", 0)
    search = {
        "calls": phases.get("search", {}).get("calls", 0),
        "tokens": phases.get("search", {}).get("tokens", 0),
        "optimizer_calls": roles.get("optimizer", {}).get("calls", 0),
        "task_calls": roles.get("task", {}).get("calls", 0) - test_calls - phases.get("seed", {}).get("calls", 0),
    }
    return {"scores": {r.example_id: r.score for r in res.batch.results}, "score": res.score, "n": res.n,
            "calls_per_example": res.calls / res.n, "tokens_per_example": res.tokens / res.n,
            "wall_s": run_wall_s(run, s), "search": search, "paid_now": paid,
            "best": s["best"]["id"], "val": s["best"]["val_score"], "seed_val": s["seed"]["val_score"],
            "proposals": s.get("proposals"), "racing": s.get("racing")}


def unfinished_note(run: Path) -> str | None:
    """For a run directory without a test result yet: how far it got (calls paid, as ``flowbot runs``
    counts them from its last event)."""
    if not (run / "events.jsonl").exists() or (run / "summary.json").exists():
        return None
    from flowbot.report.runs import run_info

    return f"not finished: {run_info(run).calls} calls paid so far (all roles); run its script again to resume it"


def run_wall_s(run: Path, summary: dict[str, Any]) -> float:
    """Wall time over all the run's sessions, from sessions.json (each session's start and last
    event, so a killed session counts too; summaries written before that fix counted only the
    sessions that finished)."""
    path = run / "sessions.json"
    if path.exists():
        return sum(max(0.0, x["last"] - x["start"]) for x in json.loads(path.read_text()))
    return summary.get("wall_s_all_sessions", summary.get("wall_s")) or 0.0


def fmt_diff(d: dict[str, Any]) -> str:
    if not d.get("n"):
        return "–"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({d['wins']}W/{d['losses']}L)"


def pareto(rows: dict[str, dict[str, Any]]) -> set[str]:
    front = set()
    for k, r in rows.items():
        if not any(o is not r and o["score"] >= r["score"] and o["tokens_per_example"] <= r["tokens_per_example"]
                   and (o["score"] > r["score"] or o["tokens_per_example"] < r["tokens_per_example"])
                   for o in rows.values()):
            front.add(k)
    return front


def plot(rows: dict[str, dict[str, Any]], front: set[str], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    at: dict[tuple[float, float], list[str]] = {}  # methods at one point (the same workflow) share a label
    for k, r in rows.items():
        ax.scatter(r["tokens_per_example"], r["score"], s=60 if k in front else 30,
                   marker="o" if r["search"] is None else "s", color="tab:red" if k in front else "tab:blue")
        at.setdefault((round(r["tokens_per_example"], 1), round(r["score"], 4)), []).append(LABELS.get(k, k))
    for (x, y), names in at.items():
        ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8,
                    va="bottom" if len(names) == 1 else "top")
    pts = sorted((rows[k]["tokens_per_example"], rows[k]["score"]) for k in front)
    if len(pts) > 1:
        ax.plot(*zip(*pts), color="tab:red", linewidth=1, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("tokens per test example (all calls of the workflow)")
    ax.set_ylabel("test score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--task", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--optimizer-model")
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--data-dir", default="../shared/datasets")
    args = ap.parse_args(argv)

    from flowbot.api import get_task
    from flowbot.optim.stats import paired_difference

    task = get_task(args.task, args.data_dir)
    rows: dict[str, dict[str, Any]] = {}
    for name in BASELINES:
        r = baseline_row(args.dir / "baselines" / f"test-{name}.json")
        if r is not None:
            rows[name] = r
    for name in METHODS:
        r = asyncio.run(method_row(args.dir / name, task, args.n_test, args.model, args.optimizer_model))
        if r is not None:
            rows[name] = r
    if "cot" not in rows:
        sys.exit("the CoT baseline (the seed) has no test results yet")
    singles = [k for k in BASELINES if k in rows]
    best_single = max(singles, key=lambda k: rows[k]["score"])
    front = pareto(rows)
    print(f"Test: first {args.n_test} items; best single-call baseline: {LABELS[best_single]}. "
          f"Differences are paired on the same items (95% intervals).\n")
    print("| method | test score | vs CoT | vs best single-call | calls / test example | tokens / test example "
          "| search calls (task / optimizer) | search tokens | wall (h) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        vs_cot = fmt_diff(paired_difference(r["scores"], rows["cot"]["scores"])) if k != "cot" else "–"
        vs_best = fmt_diff(paired_difference(r["scores"], rows[best_single]["scores"])) if k != best_single else "–"
        sr = r["search"]
        search = f"{sr['task_calls']} / {sr['optimizer_calls']}" if sr else "–"
        tokens = f"{sr['tokens']:,}" if sr else "–"
        mark = " ◆" if k in front else ""
        print(f"| {LABELS.get(k, k)}{mark} | {r['score']:.3f} (n={r['n']}) | {vs_cot} | {vs_best} | "
              f"{r['calls_per_example']:.2f} | {r['tokens_per_example']:,.0f} | {search} | {tokens} | "
              f"{(r['wall_s'] or 0) / 3600:.1f} |")
    print("\n◆ on the Pareto front of test score against tokens per test example.")
    for k, r in rows.items():
        if r["search"] is not None:
            print(f"- {LABELS[k]}: best {r['best']} (validation {r['val']:.3f}, seed {r['seed_val']:.3f}); "
                  f"proposals {r['proposals']}; racing {r['racing']}; calls paid to print this row: {r['paid_now']}")
    for k, r in rows.items():
        if r.get("stuck"):
            print(f"- warning, {LABELS[k]}: {r['stuck']}")
    for name in METHODS:
        note = unfinished_note(args.dir / name)
        if note:
            print(f"- {LABELS[name]}: {note}")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"\nPrinted on: {cpu}, Python {platform.python_version()}.")
    plot(rows, front, args.dir / "pareto.png", f"{args.task}: test score vs cost per example")


if __name__ == "__main__":
    main(sys.argv[1:])
