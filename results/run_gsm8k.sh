#!/usr/bin/env bash
# Real-model experiments on GSM8K with the embedded Qwen2.5-Coder-1.5B in both roles (task and
# optimizer), on two CPU cores (~23 s per call). Every command is resumable: re-run the script after an
# interruption and nothing already paid for is paid again (each run keeps its LM cache in its run dir).
# Same split for every method: the first 10 training problems of the bundled sample, the first 8
# AFlow validation problems and the first 16 AFlow test problems; every run also evaluates the
# unoptimized CoT seed on the same 16 test problems ("seed_test"), so comparisons are paired.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON="--task gsm8k --train-size 10 --val-size 8 --test-size 16 --seed 0 --concurrency 1"

# Runs 2 and 3 start from a copy of run 1's cache, so the seed's validation and test answers (the
# same calls in every run) are served from it: free and uncharged, as a cache hit is for any user,
# and equally so for FlowBot and the AFlow-style baseline, which are compared on equal budgets.
seed_cache() {
  if [ ! -e "$2/cache.sqlite" ] && [ -e "$1/cache.sqlite" ]; then
    mkdir -p "$2"
    python -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
      "$1/cache.sqlite" "$2/cache.sqlite"
  fi
}

# Issue 5: the inner loop alone (prompt-only ablation) against the unoptimized CoT seed
flowbot optimize $COMMON --inner-only --steps 3 --budget-calls 80 --run-dir results/gsm8k/inner-only

# Issue 6: FlowBot (bilevel) and the AFlow-style baseline, same model, budget and split
seed_cache results/gsm8k/inner-only results/gsm8k/flowbot
flowbot optimize $COMMON --steps 1 --rounds 3 --budget-calls 120 --run-dir results/gsm8k/flowbot
seed_cache results/gsm8k/inner-only results/gsm8k/aflow
flowbot optimize $COMMON --method aflow --rounds 3 --budget-calls 120 --run-dir results/gsm8k/aflow
