"""Every run directory under results/ (written by older versions of FlowBot) still renders: its
report, its line in ``flowbot runs``, and its log read back event by event through the typed events
(nothing in it is a type or a field this version does not declare). Read only: nothing is written
into results/."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from flowbot.cli.progress import RunPrinter
from flowbot.optim.events import UnknownEvent, read_event
from flowbot.optim.rundir import read_event_log
from flowbot.report.html import render_report
from flowbot.report.rundata import load_run
from flowbot.report.runs import run_info

RESULTS = Path(__file__).resolve().parents[2] / "results"
RUN_FILES = ("config.json", "events.jsonl", "summary.json")
RUN_DIRS = sorted({p.parent for name in RUN_FILES for p in RESULTS.rglob(name)})


def name(path: Path) -> str:
    return str(path.relative_to(RESULTS))


def test_the_committed_runs_are_found():
    names = {name(p) for p in RUN_DIRS}
    assert {"drop-1.5b/flowbot", "gsm8k/flowbot", "gsm8k/aflow", "gsm8k/inner-only"} <= names


@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=name)
def test_a_committed_run_renders(run_dir):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir())
    run = load_run(run_dir)
    page = render_report(run)
    assert f"FlowBot run report: {run.task}" in page and "Traceback" not in page
    for c in run.candidates:
        assert f"<b>{c['id']}</b>" in page
    info = run_info(run_dir)
    assert info.task == run.task and info.method == run.method
    printer = RunPrinter(Console(file=io.StringIO(), width=200, color_system=None))
    for rec in run.events:
        printer.on_event(rec)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir()) == before  # nothing written


@pytest.mark.parametrize("run_dir", [p for p in RUN_DIRS if (p / "events.jsonl").exists()], ids=name)
def test_every_logged_line_reads_back_typed_and_whole(run_dir):
    lines, torn = read_event_log(run_dir / "events.jsonl")
    assert torn is None
    for line in lines:
        rec = read_event(line)
        assert not isinstance(rec.event, UnknownEvent), line.get("type")
        assert not rec.extra, f"{line.get('type')} carries undeclared fields {sorted(rec.extra)}"
        assert rec.to_dict() == line
