"""report.html from real (scripted-model) run directories: self-contained, complete, escaped."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from flowbot.graph.io import load_workflow
from flowbot.graph.render import to_mermaid
from flowbot.report import plots
from flowbot.report.html import write_report
from flowbot.report.markup import redact, word_diff
from flowbot.report.rundata import ReportError, load_run

from .conftest import INJECTED, make_run, optimizer_lm, task_lm

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = {"run", "results", "plots", "workflows", "prompts", "inner", "outer"}


class Page(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if a.get("id")}

    def images(self) -> list[bytes]:
        out = []
        for tag, a in self.tags:
            if tag == "img":
                src = a.get("src") or ""
                assert src.startswith("data:image/png;base64,"), src[:60]
                out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
        return out


def check_self_contained(text: str) -> Page:
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    forbidden = {"script", "link", "iframe", "object", "embed", "base", "form"}
    assert not forbidden & {t for t, _ in page.tags}
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:80])
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*https?://""", text, re.I)
    images = page.images()
    assert images and all(img.startswith(PNG_SIGNATURE) for img in images)
    return page


def section(text: str, sid: str) -> str:
    start = text.index(f'id="{sid}"')
    nxt = text.find('<h2 id="', start + 1)
    return text[start: nxt if nxt != -1 else len(text)]


@pytest.fixture(scope="session")
def full_report(full_run) -> str:
    path = write_report(full_run)
    assert path == full_run / "report.html" and path.is_file()
    return path.read_text(encoding="utf-8")


def test_full_run_report_is_self_contained_and_complete(full_run, full_report):
    text = full_report
    page = check_self_contained(text)
    assert SECTIONS <= page.ids()
    assert len(page.images()) >= 5  # three plots, seed and best
    summary = json.loads((full_run / "summary.json").read_text())
    outer = section(text, "outer")
    for c in summary["candidates"]:
        assert f"<td>{c['id']}" in outer
    assert summary["best"]["id"] != "c0"  # the program-of-thought edit won
    gain = summary["test_gain_vs_seed"]
    assert f"{gain['mean']:+.3f}" in section(text, "results")
    best = load_workflow(full_run / "best.json")
    assert html.escape(to_mermaid(best)) in section(text, "workflows")
    assert "valid (repaired)" in outer and "nowhere" in outer
    assert "dollars per example" in text  # prices were known


def test_markup_from_the_run_is_escaped(full_report):
    assert "<script" not in full_report.lower()
    assert "evil.example/\">" not in full_report
    escaped = html.escape(INJECTED)
    assert escaped in section(full_report, "inner")  # the proposed rewrite
    assert escaped in section(full_report, "prompts")  # accepted, so it is in the best workflow


def test_prompt_diff_and_inner_table(full_run, full_report):
    events = [json.loads(line) for line in (full_run / "events.jsonl").read_text().splitlines()]
    records = [e for e in events if e["type"] == "inner_candidate"]
    inner = section(full_report, "inner")
    assert f"{len(records)} proposals, {sum(r['accepted'] for r in records)} accepted" in inner
    for r in records:
        assert html.escape(r["reason"]) in inner
    prompts = section(full_report, "prompts")
    assert "<del>" in prompts and "<ins>" in prompts
    assert "run_program" in prompts and "new tool node" in prompts


def test_run_stopped_by_a_tiny_budget(stopped_run):
    text = write_report(stopped_run).read_text(encoding="utf-8")
    page = check_self_contained(text)
    assert SECTIONS <= page.ids()
    summary = json.loads((stopped_run / "summary.json").read_text())
    assert summary["stopped"] and html.escape(summary["stopped"]) in section(text, "run")
    assert [c["id"] for c in summary["candidates"]] == ["c0"]
    assert "nothing better than the (tuned) seed" in section(text, "results")
    assert "unknown price" in text and "tokens per example" in text  # no dollars without prices
    assert "No structural edit was proposed" in section(text, "outer")


def test_budget_gone_before_the_seed_was_scored(tmp_path):
    def stop_at_once(event):
        if event["type"] == "run_started":
            (tmp_path / "run" / "STOP").write_text("")
    run_dir = make_run(tmp_path / "run", task_lm(), optimizer_lm(), callbacks=[stop_at_once])
    assert json.loads((run_dir / "summary.json").read_text())["seed"]["val_score"] is None  # not scored
    text = write_report(run_dir).read_text(encoding="utf-8")
    check_self_contained(text)
    assert "before the seed was scored" in section(text, "run")
    results = section(text, "results")
    assert "0.000" not in results  # no made-up score
    assert "No candidate was scored" in section(text, "outer")


def test_aflow_run(aflow_run):
    text = write_report(aflow_run).read_text(encoding="utf-8")
    check_self_contained(text)
    assert "No inner-loop candidates" in section(text, "inner")
    best = load_workflow(aflow_run / "best.json")
    assert any(n.kind == "tool" for n in best.sketch.nodes)
    workflows = section(text, "workflows")
    for node_id in best.sketch.node_ids():
        assert node_id in workflows
    run = load_run(aflow_run)
    assert run.accepted_ids == ["c0", "c1"]


def test_interrupted_run_without_summary(full_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir, ignore=shutil.ignore_patterns("summary.json", "report.html"))
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"test_evaluated"' in line)
    (run_dir / "events.jsonl").write_text("\n".join(lines[:cut]) + '\n{"seq": 99, "type": "tor')
    text = write_report(run_dir).read_text(encoding="utf-8")
    check_self_contained(text)
    assert "did not finish" in text
    assert "line " + str(cut + 1) in text and "torn" in text
    assert "not evaluated" in section(text, "results")


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ReportError, match="not a FlowBot run directory"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="no such run directory"):
        write_report(tmp_path / "missing")


def test_logged_spend_is_exact_and_matches_the_totals(full_run):
    # the driver logs a cumulative meter snapshot with every event
    series = load_run(full_run).usage_series()
    assert series.exact and series.unit == "usd"
    for role, line in series.by_role.items():
        assert len(line) == len(series.x)
        assert line == sorted(line)  # cumulative
        assert line[-1] == pytest.approx(series.totals[role])


def test_meter_snapshots_in_the_log_make_the_spend_exact(full_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    calls = 0
    for e in events:  # what a driver that logs cumulative meter snapshots would write
        calls += 3
        e["usage_total"] = {"task": {"calls": calls, "prompt_tokens": 10 * calls, "completion_tokens": calls,
                                     "cost_usd": calls * 1e-4},
                            "optimizer": {"calls": 1, "prompt_tokens": 5, "completion_tokens": 5, "cost_usd": 1e-3}}
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    run = load_run(run_dir)
    series = run.usage_series()
    assert series.exact
    assert series.by_role["task"][-1] == pytest.approx(calls * 1e-4)
    xs, label = plots.candidate_x(run)
    last = {e["id"]: e["usage_total"]["task"]["calls"] + 1 for e in events if e["type"] == "candidate_evaluated"}
    assert xs == [last[c["id"]] for c in run.candidates] and "calls" in label
    assert plots.cost_over_run(run).startswith(PNG_SIGNATURE)


def test_word_diff_marks_and_escapes():
    out = word_diff("Answer in <b>one</b> word.", "Answer in <b>two</b> words, please.")
    assert "<b>" not in out and "&lt;b&gt;" in out
    assert re.search(r"<del>[^<]*one", out) and re.search(r"<ins>[^<]*two", out)
    assert out.startswith("Answer in ")
    assert word_diff("same text", "same text") == "same text"


def test_redact_hides_secrets():
    out = redact({"api_key": "sk-123", "base_url": "https://user:pw@host.example:8443/v1", "max_tokens": 5,
                  "nested": [{"Authorization": "Bearer x"}]})
    assert "sk-123" not in json.dumps(out) and "pw@" not in json.dumps(out) and "Bearer" not in json.dumps(out)
    assert out["max_tokens"] == 5 and out["base_url"] == "https://host.example:8443/v1"
