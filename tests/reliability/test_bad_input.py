"""Issue 13, hole 7: bad input gets one line naming the place (file, line, field, option), never a
traceback or a silent default, and leaves nothing behind."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

import flowbot
from flowbot.api import resolve_seed
from flowbot.cli.main import app
from flowbot.errors import FlowBotError
from flowbot.tasks.loaders import DataError
from flowbot.testing import ScriptedLM

SERVER = ["--model", "m", "--base-url", "http://127.0.0.1:9/v1"]  # never reached: input is checked first
ROWS = "".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(20))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(ROWS)
    (tmp_path / "latin1.jsonl").write_bytes(ROWS.encode() + b'{"q": "caf\xe9", "a": "1"}\n')
    (tmp_path / "latin1.csv").write_bytes(b"q,a\n1+1,2\ncaf\xe9,3\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "header_only.csv").write_text("q,a\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "wf_latin1.json").write_bytes(b'{"sketch": {"inputs": ["q"]}, "name": "\xe9"}')
    (tmp_path / "tiny.jsonl").write_text(json.dumps({"q": "1", "a": "1"}) + "\n")
    (tmp_path / "task_latin1.yaml").write_bytes(b"data: d.jsonl\ninputs: [q]\ntargets: [a]\ndescription: caf\xe9\n")
    return tmp_path


def data(path: str, *extra: str) -> list[str]:
    return ["--data", path, "--input", "q", "--target", "a", *extra, *SERVER]


CASES = {
    "non-UTF-8 JSONL": (["eval", *data("latin1.jsonl")], "latin1.jsonl, line 21"),
    "non-UTF-8 CSV": (["eval", *data("latin1.csv")], "latin1.csv, line 3"),
    "non-UTF-8 workflow": (["show", "wf_latin1.json"], "wf_latin1.json, line 1"),
    "non-UTF-8 task file": (["eval", "--task-file", "task_latin1.yaml", *SERVER], "task_latin1.yaml, line 4"),
    "workflow is a directory": (["run", "adir", "--input", "{}"], "adir: is a directory"),
    "eval workflow is a directory": (["eval", "--workflow", "adir", *data("d.jsonl")], "adir: is a directory"),
    "data is a directory": (["eval", *data("adir")], "adir: is a directory"),
    "empty dataset (eval)": (["eval", *data("empty.jsonl")], "empty.jsonl: the file has no examples"),
    "header-only CSV": (["eval", *data("header_only.csv")], "header_only.csv: the file has no examples"),
    "empty dataset (optimize)": (["optimize", *data("empty.jsonl"), "--run-dir", "run"], "empty.jsonl"),
    "no validation split": (["optimize", *data("tiny.jsonl"), "--run-dir", "run"], "validation split is empty"),
    "negative budget": (["optimize", *data("d.jsonl"), "--budget-calls", "-5", "--run-dir", "run"],
                        "--budget-calls"),
    "zero dollar budget": (["optimize", *data("d.jsonl"), "--budget-usd", "0", "--run-dir", "run"], "--budget-usd"),
    "negative steps": (["optimize", *data("d.jsonl"), "--steps", "-1", "--run-dir", "run"], "--steps"),
    "zero minibatch": (["optimize", *data("d.jsonl"), "--minibatch", "0", "--run-dir", "run"], "--minibatch"),
    "negative --demo-bootstrap": (["optimize", *data("d.jsonl"), "--demo-bootstrap", "-2", "--run-dir", "run"],
                                  "--demo-bootstrap: must be at least 0, got -2"),
    "typo in --demo-teacher": (["optimize", *data("d.jsonl"), "--demo-teacher", "optimiser", "--run-dir", "run"],
                               "--demo-teacher: unknown value 'optimiser'"),
    "negative limit": (["eval", *data("d.jsonl"), "--limit", "-3"], "--limit"),
    "typo in --feedback": (["optimize", *data("d.jsonl"), "--feedback", "local", "--run-dir", "run"],
                           "--feedback: unknown value 'local'"),
    "typo in --method": (["optimize", *data("d.jsonl"), "--method", "aflw", "--run-dir", "run"], "aflw"),
    "unknown split": (["eval", *data("d.jsonl"), "--split", "tst"], "'tst'"),
    "run without an input field": (["run", "wf.json", "--input", '{"x": 1}'], "--input: missing field(s) 'q'"),
    "negative --workers (eval)": (["eval", *data("d.jsonl"), "--workers", "-1"], "--workers: must be at least 1"),
    "zero --workers (optimize)": (["optimize", *data("d.jsonl"), "--workers", "0", "--backend", "ray", "--run-dir",
                                   "run"], "--workers: must be at least 1, got 0"),
    "zero --margin": (["optimize", *data("d.jsonl"), "--margin", "0", "--run-dir", "run"],
                      "--margin: must be at least 1, got 0"),
    "zero --alpha": (["optimize", *data("d.jsonl"), "--alpha", "0", "--run-dir", "run"], "--alpha: must be more than 0"),
    "--alpha above 1": (["optimize", *data("d.jsonl"), "--alpha", "1.5", "--run-dir", "run"],
                        "--alpha: must be more than 0 and at most 1, got 1.5"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clean_line_and_leaves_nothing(folder, case):
    args, place = CASES[case]
    if "wf.json" in args:
        flowbot.RunnableWorkflow.from_ir(resolve_seed("io", flowbot.Task(
            "t", data=str(folder / "d.jsonl"), inputs=["q"], targets=["a"]))).save(folder / "wf.json")
    before = sorted(os.listdir(folder))
    res = CliRunner().invoke(app, args)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr + res.stdout
    assert place in lines[0]
    assert "Traceback" not in res.output
    assert sorted(os.listdir(folder)) == before  # no partial run directory, no result file


def test_a_byte_order_mark_does_not_rename_the_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid,q,a\nx1,1+1,2\nx2,2+2,4\n".encode("utf-8"))
    task = flowbot.Task("bom", data=str(path), val=str(path), inputs=["q"], targets=["a"])
    assert [ex["id"] for ex in task.examples("train")] == ["x1", "x2"]
    bom_jsonl = tmp_path / "bom.jsonl"
    bom_jsonl.write_bytes("\ufeff".encode() + ROWS.encode())
    assert len(flowbot.Task("j", data=str(bom_jsonl), inputs=["q"], targets=["a"]).examples("train")) == 12


def test_the_python_api_names_the_setting(tmp_path):
    task = flowbot.Task("t", data=[{"q": f"{i}", "a": f"{i}"} for i in range(20)], inputs=["q"], targets=["a"])
    lm = {"m": ScriptedLM(default="Answer: 1")}
    for bad, where in [({"budget": {"calls": -5}}, "budget calls"), ({"inner": {"steps": -2}}, "inner.steps"),
                       ({"inner": {"feedback": "local"}}, "inner.feedback"), ({"val_size": 0}, "val_size"),
                       ({"budget": {"cals": 5}}, "cals"), ({"racing": {"margin": 0}}, "racing.margin"),
                       ({"racing": {"alpha": 1.5}}, "racing.alpha"),
                       ({"inner": {"demo_bootstrap": -1}}, "inner.demo_bootstrap"),
                       ({"inner": {"demo_teacher": "teacher"}}, "inner.demo_teacher")]:
        with pytest.raises(FlowBotError, match=where):
            flowbot.optimize(task, model="m", providers=lm, run_dir=tmp_path / "run", **bad)
        assert not (tmp_path / "run").exists()
    with pytest.raises(FlowBotError, match="limit"):
        flowbot.evaluate("io", task, limit=0, model="m", providers=lm, cache=False)
    from flowbot.runtime.backends import make_backend

    with pytest.raises(ValueError, match="workers"):
        make_backend("ray", workers=-1)
    with pytest.raises(TypeError, match="missing input field"):  # still a TypeError for Python callers
        flowbot.RunnableWorkflow.from_ir(resolve_seed("io", task)).bind(lm=None)(x=1)


def test_a_failed_optimize_that_paid_nothing_leaves_no_run_directory(tmp_path):
    from flowbot.lm import LMPermanentError

    task = flowbot.Task("t", data=[{"q": f"{i}", "a": f"{i}"} for i in range(20)], inputs=["q"], targets=["a"])
    with pytest.raises(LMPermanentError):
        flowbot.optimize(task, model="m", providers={"m": ScriptedLM()}, run_dir=tmp_path / "runs" / "x")
    assert not (tmp_path / "runs").exists()


def test_data_errors_are_still_data_errors(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"q": "\xff"}\n')
    with pytest.raises(DataError, match="x.jsonl, line 1"):
        flowbot.Task("t", data=str(tmp_path / "x.jsonl"), inputs=["q"], targets=["a"])


def test_only_user_errors_become_one_line():
    """A FlowBotError (bad input, a bad setting) or an LM error is one line; anything else is a bug
    and keeps its traceback (an internal ValueError is not a user error)."""
    import typer

    from flowbot.cli.errors import handled

    @handled
    def user_error() -> None:
        raise FlowBotError("must be at least 1, got 0", where="--limit")

    @handled
    def internal_bug() -> None:
        raise ValueError("an internal invariant broke")

    with pytest.raises(typer.Exit):
        user_error()
    with pytest.raises(ValueError, match="internal invariant"):
        internal_bug()


def test_every_user_error_type_is_a_flowbot_error():
    from flowbot.graph.edits import EditError
    from flowbot.graph.io import WorkflowFileError
    from flowbot.graph.sketch import WorkflowValidationError
    from flowbot.lm.base import BudgetExceeded, LMError
    from flowbot.optim.rundir import RunDirError
    from flowbot.report.rundata import ReportError
    from flowbot.report.runs import NoSuchRunsDirectory
    from flowbot.tasks.metric_specs import MetricError

    for error in (DataError, EditError, MetricError, ReportError, RunDirError, WorkflowFileError,
                  WorkflowValidationError, NoSuchRunsDirectory):
        assert issubclass(error, FlowBotError), error
    assert issubclass(NoSuchRunsDirectory, FileNotFoundError)  # as before, for Python callers
    assert not issubclass(BudgetExceeded, LMError)  # a used-up budget is control flow, not an LM failure
    with pytest.raises(FlowBotError, match="nowhere: no such directory"):
        from flowbot.report.runs import list_runs

        list_runs("nowhere")
