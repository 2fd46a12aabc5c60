"""``results/report-demo/make_demo.py`` remakes the committed demo report; its run-building part
runs here (into a temp dir, no Chromium), so a change to the search cannot break it silently."""

import importlib.util
import json
from pathlib import Path

from flowbot.report.html import write_report

DEMO = Path(__file__).resolve().parents[2] / "results" / "report-demo" / "make_demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("make_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_demo_builds_a_run_of_the_current_search(tmp_path):
    demo = load_demo()
    run = tmp_path / "run"
    first, second = demo.make_run(run)
    assert first.stopped and "stop file" in first.stopped
    assert second.resumed and second.stopped is None and second.replayed_events > 0

    summary = json.loads((run / "summary.json").read_text())
    props = summary["proposals"]
    assert props["made"] == props["valid"] == props["applied"] >= 3 and props["invalid"] == 0
    racing = summary["racing"]
    assert racing["raced"] >= 3 and racing["accepted"] >= 1 and racing["stopped_early"] >= 2
    edits = {c["edit"]: c for c in summary["candidates"]}
    assert edits["program_of_thought(solve)"]["accepted"] and second.best_id == edits["program_of_thought(solve)"]["id"]
    assert sum(not c["accepted"] for c in summary["candidates"]) >= 2  # raced out
    assert second.best.sketch.node_ids()[0] == "write_program"

    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    proposals = [e for e in events if e["type"] == "proposal"]
    assert all(e["status"] == "valid" and e["critique"] for e in proposals)  # answers to the schema
    rewrites = {e["node_id"] for e in events if e["type"] == "inner_candidate" and e["accepted"]}
    assert {"solve", "write_program"} <= rewrites  # the seed's and the accepted structure's

    rows = [json.loads(line) for line in (run / "test_examples.jsonl").read_text().splitlines()]
    outcomes = [(r["best"]["score"] > r["seed"]["score"]) - (r["best"]["score"] < r["seed"]["score"]) for r in rows]
    assert outcomes.count(1) >= 5 and outcomes.count(-1) >= 1  # wins and a loss for the per-example view
    assert json.loads((run / "config.json").read_text())["sessions"] == 2
    assert not (run / "cache.sqlite").exists() and not (run / "lock").exists()

    html = write_report(run).read_text()
    assert 'id="examples"' in html and "won 11" in html
    page = demo.from_examples(run / "report.html")
    assert "#examples ~ *" in page.read_text()
