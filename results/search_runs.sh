# Sourced by each phase's methods.sh (which sets OUT, BASE and COMMON): one search run of the protocol,
# resumable, from a copy of the phase's baseline cache.

# Each run starts from a copy of the baselines' cache: the seed's validation and test answers are the
# same calls in every method, free to all of them alike (a cache hit another run paid for is not charged).
seed_cache() {
  if [ ! -e "$1/cache.sqlite" ]; then
    mkdir -p "$1"
    python -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
      "$BASE/cache.sqlite" "$1/cache.sqlite"
  fi
}

# a finished run's last event is run_finished; a run ended by its STOP file logs one too, with the stop
# as its reason, and that one resumes
finished() {  # run directory
  local last
  last=$(tail -n 1 "$1/events.jsonl" 2>/dev/null || true)
  grep -q '"type": "run_finished"' <<<"$last" && ! grep -q '"stopped": "stop file' <<<"$last"
}

run() {  # name, extra options
  local name=$1; shift
  # a finished run is not resumed: resuming re-executes it from its cache, and code changed since
  # (pricing, schedule) could take it past where it ended; its table comes from results/protocol.py
  if finished "$OUT/$name"; then
    echo "$name: finished (see $OUT/$name/summary.json)"; return
  fi
  seed_cache "$OUT/$name"
  flowbot optimize $COMMON "$@" --run-dir "$OUT/$name"
}
