#!/usr/bin/env bash
# Issue 16, phase 1: DROP (official F1) with the embedded Qwen2.5-Coder-1.5B-Instruct in every role.
# The protocol (README.md beside this script) was fixed before the first run. Every command is
# resumable: run the script again after an interruption and nothing already paid for is paid again;
# on the committed run directories it pays zero calls and prints the same table.
#   results/drop-1.5b/run.sh            # everything (baselines, then the search methods)
#   results/drop-1.5b/run.sh baselines  # only the single-call baselines (and the seed on validation)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/drop-1.5b
MODEL=qwen2.5-coder-1.5b
DATA="--data-dir ${FLOWBOT_DATA_DIR:-../shared/datasets}"
BASE=$OUT/baselines
STAGE=${1:-all}
mkdir -p "$BASE"

# -- single-call baselines: test only (first 150 of AFlow's test fixture), temperature 0 except the
#    sampled self-consistency copies (seeded); one shared cache, so CoT's greedy answer is also the
#    first sample of CoT-SC.
EVAL="flowbot eval --task drop $DATA --model $MODEL --concurrency 1 --cache $BASE/cache.sqlite"
# an evaluation already written is not run again (re-running it from the cache would pay nothing
# but overwrite its record, wall time included, with the replay's)
evaluate() {  # output file, eval options
  local out=$1; shift
  if [ -e "$out" ]; then echo "$out: done"; return; fi
  $EVAL "$@" --out "$out"
}
# the CoT seed on validation (first 50 of AFlow's validation fixture): every search method starts
# from it, and each gets a copy of this cache, so the seed's answers are free to all of them alike
evaluate $BASE/val-cot.json --split val --limit 50 -w cot
for w in cot io sc3 react; do
  evaluate $BASE/test-$w.json --split test --limit 150 -w $w
done
# ReAct again, reported apart (7 Dec, code 924ff5f): with the protocol's frozen code the 1.5B
# wrote "Action: python" with no input on every item, which was read as its answer (F1 0 on all 150);
# the loop now reads such calls, answers them with an error that shows the form, and asks for the
# final answer before the last call. The first row stays in the table as it was.
evaluate $BASE/test-react-v2.json --split test --limit 150 -w react
[ "$STAGE" = baselines ] && exit 0

exec "$OUT/methods.sh"
