"""The report's answers to "which examples, and why": the per-example test view (best against
seed, with traces), the Pareto label only where the plot puts the front, usage by phase over every
session, plots over paid calls, and the search tree — on real run directories (scripted models)."""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from flowbot.report.html import write_report
from flowbot.report.rundata import load_run, pareto_ids

from .conftest import make_run, optimizer_lm, task_lm

PNG = b"\x89PNG\r\n\x1a\n"


def section(text: str, sid: str) -> str:
    start = text.index(f'id="{sid}"')
    nxt = text.find('<h2 id="', start + 1)
    return text[start: nxt if nxt != -1 else len(text)]


def test_per_example_view_puts_wins_and_losses_first_with_both_traces(full_run):
    rows = [json.loads(line) for line in (full_run / "test_examples.jsonl").read_text().splitlines()]
    summary = json.loads((full_run / "summary.json").read_text())
    gain = summary["test_gain_vs_seed"]
    text = write_report(full_run).read_text(encoding="utf-8")
    view = section(text, "examples")
    assert f"won {gain['wins']}</b>" in view and f"lost {gain['losses']}</b>" in view
    outcomes = re.findall(r'<span class="(?:won|lost|muted)">(won|lost|tie)</span>', view)
    assert len(outcomes) == len(rows) and outcomes == sorted(outcomes, key=["won", "lost", "tie"].index)
    first = next(r for r in rows if r["best"]["score"] > r["seed"]["score"])
    assert f">{first['id']}<" in view
    # both traces, node by node: the best workflow's program step and its output are there
    assert "<details open>" in view and "run_program (tool)" in view and "solve (llm)" in view
    replied = next(n for n in first["best"]["trace"]["nodes"] if n.get("raw"))
    assert html.escape(replied["raw"][-1].split("\n")[0]) in view
    assert "<script>" not in view  # text from the run is escaped


def test_the_view_says_so_when_the_run_kept_no_examples(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (run / "test_examples.jsonl").unlink()
    assert "not saved example by example" in section(write_report(run).read_text(), "examples")
    (run / "test_examples.jsonl").write_text('{"id": "x", "best": {"score": 1}}\n["not a row"]\n{"torn": ')
    text = write_report(run).read_text()
    assert "test examples (the seed was not evaluated" in section(text, "examples")
    assert "test_examples.jsonl, line 3: not JSON" in text


def test_pareto_label_only_on_the_plotted_front(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    summary = json.loads((run / "summary.json").read_text())
    # a worse and dearer candidate, and a summary that calls every candidate "front"
    summary["candidates"].append({"id": "c2", "parent": "c1", "edit": "ensemble(node_id=solve)", "val_score": 0.2,
                                  "cost_per_example": 1.0, "tokens_per_example": 1e6, "nodes": 4})
    ids = [c["id"] for c in summary["candidates"]]
    summary["front"] = [{"id": i} for i in ids]
    (run / "summary.json").write_text(json.dumps(summary))
    data = load_run(run)
    front = pareto_ids(data.candidates, data.unit())
    assert data.front_ids == front == ["c0", "c1"] and "c2" in ids
    text = write_report(run).read_text()
    table = section(text, "outer").split("<h3>Candidates</h3>")[1]
    for c in data.candidates:
        row = re.search(rf"<tr[^>]*><td>{c['id']}[^<]*</td>.*?</tr>", table, re.S).group(0)
        assert row.endswith(">yes</span></td></tr>") == (c["id"] in front), c["id"]
    tree = section(text, "outer").split("<h3>Candidates</h3>")[0]
    assert tree.count("Pareto front</span>") == len(front)


def test_a_raced_out_candidate_is_shown_as_raced_out_not_as_a_score_of_zero(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    summary = json.loads((run / "summary.json").read_text())
    # the cheapest candidate of all, but its race stopped early: it has no score and is on no front
    race = {"accepted": False, "wins": 3, "losses": 2, "evaluated": 24, "total": 50, "stopped_early": True}
    summary["candidates"].append({"id": "c9", "parent": "c0", "edit": "format_answer(solve)", "val_score": None,
                                  "cost_per_example": 0.0, "tokens_per_example": 1.0, "nodes": 2, "race": race})
    (run / "summary.json").write_text(json.dumps(summary))
    data = load_run(run)
    assert "c9" not in data.front_ids and data.best_id != "c9"
    assert data.front_ids == pareto_ids([c for c in data.candidates if c["id"] != "c9"], data.unit())
    outer = section(write_report(run).read_text(), "outer")
    assert "raced out: 3W/2L after 24 of 50" in outer
    row = re.search(r"<tr[^>]*><td>c9[^<]*</td>.*?</tr>", outer.split("<h3>Candidates</h3>")[1], re.S).group(0)
    assert "0.000" not in row and "raced out" in row


def test_usage_by_phase_covers_every_session_and_plots_are_over_paid_calls(tmp_path):
    run = tmp_path / "run"
    make_run(run, task_lm((1e-6, 4e-6)), optimizer_lm((1e-6, 4e-6)), budget={"calls": 40})  # a small first session
    make_run(run, task_lm((1e-6, 4e-6)), optimizer_lm((1e-6, 4e-6)), budget={"calls": 500})  # resumed
    data = load_run(run)
    assert data.sessions == 2
    phases, every_session = data.phase_usage()
    assert every_session and set(phases) == {"seed", "search", "test"}
    roles = data.summary["usage_by_role"]
    assert sum(p["calls"] for p in phases.values()) == sum(u["calls"] for u in roles.values())
    assert sum(p["cost_usd"] for p in phases.values()) == pytest.approx(sum(u["cost_usd"] for u in roles.values()))
    text = write_report(run).read_text()
    assert "Usage by phase (summed over all 2 sessions)" in text
    series = data.usage_series()
    assert series.exact and "paid LM calls" in series.x_label
    assert series.x == sorted(series.x) and series.x[-1] == sum(u["calls"] for u in roles.values())
    marks = dict((cid, x) for x, cid in series.candidate_marks)
    assert set(marks) == {c["id"] for c in data.candidates} and all(0 < x <= series.x[-1] for x in marks.values())


def test_search_tree_nests_candidates_under_their_parents_with_their_edits(full_run, aflow_run):
    for run_dir in (full_run, aflow_run):
        data = load_run(run_dir)
        tree = section(write_report(run_dir).read_text(), "outer").split("<h3>Candidates</h3>")[0]
        assert "Search tree" in tree
        for c in data.candidates:
            assert f"<b>{c['id']}</b>" in tree
            if c.get("parent"):
                # the child's list item sits inside its parent's
                parent_at = tree.index(f"<b>{c['parent']}</b>")
                child_at = tree.index(f"<b>{c['id']}</b>")
                between = tree[parent_at:child_at]
                assert between.count("<ul") > between.count("</ul>"), c["id"]
                assert c["edit"].split("(")[0] in tree[child_at:child_at + 400]


def test_rejected_proposals_hang_greyed_under_their_parent_and_odd_events_do_not_crash(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    with open(run / "events.jsonl", "a") as fh:
        for e in ({"type": "candidate_rejected", "parent": "c0", "edit": "remove_node(solve)", "reason": "invalid"},
                  {"type": "candidate_evaluated"}, {"type": "from_a_newer_flowbot", "payload": [1, 2]},
                  {"type": "candidate_evaluated", "id": "c9", "parent": "c9", "val_score": "n/a"},
                  {"no_type": True}):
            fh.write(json.dumps(e) + "\n")
    text = write_report(run).read_text()
    tree = section(text, "outer").split("<h3>Candidates</h3>")[0]
    assert 'class="rejected">✗ remove_node(solve) — dropped: invalid' in tree
    assert tree.count("<b>c9</b>") == 1  # its own parent: shown once, as a root
