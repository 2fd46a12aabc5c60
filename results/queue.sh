#!/usr/bin/env bash
# Issue 16: every run of the protocol that is not finished yet, one after another, in the order the
# phase READMEs give. Each step is resumable and a finished one is skipped (pays nothing), so after
# any interruption start the queue again:
#   nohup nice -n -10 results/queue.sh > queue.log 2>&1 &
# To end it: `touch results/STOP` (no new step starts), then stop the step that is running (a search:
# `touch <its run dir>/STOP`, it stops before its test; an evaluation: kill it, its answers are cached).
set -euo pipefail
cd "$(dirname "$0")/.."
# a step a killed queue left running (resuming it now would meet its lock): wait for it to end
while pgrep -f "flowbot (optimize|eval) " >/dev/null; do sleep 30; done
step() {
  if [ -e results/STOP ]; then echo "queue: results/STOP is there, not starting: $*"; exit 0; fi
  echo "queue: $* ($(date -u +%FT%TZ))"
  "$@"
}
# phase 1 as protocolled: prompt-only (finished), then FlowBot's run 4 first of the set of runs 4
# (defined in results/drop-1.5b/README.md before any of them ran): it is the run most likely to decide
# the goal, so it gets the next hours of compute. The order changes no result: every run has its own
# cache, seeded from the baselines' one, and the sampled CoT-SC answers there are no prompt a search sends.
step results/drop-1.5b/methods.sh inner-only
step results/drop-1.5b/methods.sh flowbot-v4
# the single-call baselines CoT-SC (3) and ReAct; then FlowBot's run 5 (the set of runs 5, defined in
# results/drop-1.5b/README.md before any of them ran) and the comparators at its budget and alpha:
# AFlow-style (no inner loop, so runs 4's) and prompt-only with the same inner loop; then the rest
# 7 Dec, night: FlowBot's run 5 first (the run most likely to decide the goal); then ReAct, the last
# single-call baseline of phase 1; then phase 2 (GSM8K, 0.5B task model, 1.5B optimizer), never started
# and the other half of the issue, ahead of run 5's comparators; then phase 1's backward-pass ablation
step results/drop-1.5b/methods.sh flowbot-v5
step results/drop-1.5b/run.sh baselines
step results/gsm8k-0.5b/run.sh
step results/drop-1.5b/methods.sh aflow-v2 inner-only-v3 inner-only-v2
step results/drop-1.5b/methods.sh feedback-global
echo "queue: done ($(date -u +%FT%TZ))"
