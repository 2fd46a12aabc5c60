#!/usr/bin/env bash
# Issue 16, phase 2: GSM8K (final-number accuracy), task model the embedded Qwen2.5-Coder-0.5B,
# optimizer model the 1.5B. Same design as phase 1 (results/drop-1.5b/README.md). Resumable; on the
# committed run directories it pays zero calls.
#   results/gsm8k-0.5b/run.sh            # the seed, FlowBot, the other baselines, the other searches
#   results/gsm8k-0.5b/run.sh baselines  # only the single-call baselines (and the seed on validation)
# Code: phase 2 had only cached some of the seed's validation answers (CoT, no tools, at 4547266) when the
# ReAct loop was fixed (924ff5f: tool calls written another way are read, the last observation asks for
# the answer); its baselines and searches run with the fixed loop, which changes no answer without tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/gsm8k-0.5b
BASE=$OUT/baselines
STAGE=${1:-all}
mkdir -p "$BASE"
# GSM8K's training sample and AFlow's validation and test fixtures ship with FlowBot (no --data-dir)
EVAL="flowbot eval --task gsm8k --model qwen2.5-coder-0.5b --concurrency 1 --cache $BASE/cache.sqlite"
# an evaluation already written is not run again (re-running it from the cache would pay nothing
# but overwrite its record, wall time included, with the replay's)
evaluate() {  # output file, eval options
  local out=$1; shift
  if [ -e "$out" ]; then echo "$out: done"; return; fi
  $EVAL "$@" --out "$out"
}
# the seed (CoT) on validation and test first: every search starts from these answers
evaluate $BASE/val-cot.json --split val --limit 50 -w cot
evaluate $BASE/test-cot.json --split test --limit 150 -w cot
# then FlowBot's search before the other baselines (7 Dec): it is what the phase is for, and the order
# changes no result (each run has its own cache; the baselines are on test only)
[ "$STAGE" = baselines ] || "$OUT/methods.sh" flowbot
for w in io sc3 react; do
  evaluate $BASE/test-$w.json --split test --limit 150 -w $w
done
[ "$STAGE" = baselines ] && exit 0
# the protocol's comparators, then the teacher runs planned on 8 Dec (README), then the ablation
exec "$OUT/methods.sh" aflow inner-only flowbot-teacher inner-only-teacher feedback-global
