"""Print a markdown table from the summary.json of each run directory given on the command line.

    python results/summarize.py results/gsm8k/inner-only results/gsm8k/flowbot results/gsm8k/aflow
"""

import json
import sys
from pathlib import Path


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def row(run: Path) -> str:
    s = json.loads((run / "summary.json").read_text())
    test, seed_test, gain = s.get("test") or {}, s.get("seed_test") or {}, s.get("test_gain_vs_seed") or {}
    roles = s.get("usage_by_role", {})
    paid = {r: u.get("calls", 0) for r, u in roles.items()}  # includes replayed calls (charged once per run)
    tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in roles.values())
    ci = gain.get("ci95")
    gain_txt = "–" if not gain.get("n") else (
        f"{gain['mean']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] ({gain['wins']}W/{gain['losses']}L)")
    nodes = next((c.get("nodes") for c in s.get("candidates", []) if c.get("id") == s["best"]["id"]), None)
    return (f"| {s['method']} | {fmt(s['seed']['val_score'])} | {fmt(s['best']['val_score'])} | "
            f"{s['best']['id']} ({nodes} node{'s' if nodes != 1 else ''}) | {fmt(seed_test.get('score'))} | "
            f"{fmt(test.get('score'))} | {gain_txt} | {paid.get('task', 0)} / {paid.get('optimizer', 0)} | "
            f"{tokens:,} | {fmt(test.get('tokens_per_example'), 0)} | {s.get('wall_s_all_sessions', 0) / 60:.0f} |")


def main(runs: list[str]) -> None:
    print("| method | seed val | best val | best candidate | seed test | best test | test gain vs seed, 95% CI "
          "| calls task / optimizer | tokens (all roles) | test tokens/example | wall (min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(row(Path(run)))


if __name__ == "__main__":
    main(sys.argv[1:])
