"""MLflow tracking and tracing against a real local MLflow store (SQLite in a temp dir), read back
with MLflow's own client."""

import json
import re

import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'flowbot[mlflow]')")

import flowbot  # noqa: E402
from flowbot.integrations.mlflow import flatten, mlflow_enabled  # noqa: E402
from flowbot.lm import LMRequest  # noqa: E402
from flowbot.tasks import Task  # noqa: E402
from flowbot.optim.operators import PROGRAM_INSTRUCTION  # noqa: E402
from flowbot.testing import ScriptedLM, instructed, scripted_optimizer  # noqa: E402

PRICE = (1e-6, 4e-6)


def products(n: int, start: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"{1000 + 37 * i}*{300 + 11 * i}", "answer": str((1000 + 37 * i) * (300 + 11 * i))}
            for i in range(start, start + n)]


def task() -> Task:
    return Task("mult", train=products(6, 0), val=products(4, 100), test=products(4, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers", tools=["python"])


def task_lm() -> ScriptedLM:
    """Wrong in its head; writes a correct program when asked for one."""
    def reply(req: LMRequest, i: int) -> str:
        if instructed(PROGRAM_INSTRUCTION)(req):
            product = re.findall(r"(\d+\*\d+)", req.messages[-1][1])[-1]
            return f"```python\nprint({product})\n```"
        return "Answer: 42"
    return ScriptedLM(default=reply, model="task", price_per_token=PRICE)


def optimizer_lm() -> ScriptedLM:
    return scripted_optimizer(
        edit='{"critique": "compute it in code", "edit": {"op": "program_of_thought", "target": "solve"}}',
        loss="The product is wrong.", backward="GRADIENT: compute the product exactly.", aggregate="- compute exactly",
        rewrite="<instruction>Multiply exactly.</instruction>", price_per_token=PRICE)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns


def run(path, uri, **kw):
    return flowbot.optimize(task(), model="task", optimizer_model="optimizer", run_dir=path, mlflow=uri,
                            providers={"task": task_lm(), "optimizer": optimizer_lm()}, train_size=6, val_size=4,
                            inner={"steps": 1, "demos": 0}, outer={"rounds": 1, "patience": 1}, **kw)


def test_a_run_logs_params_metrics_artifacts_and_node_spans(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    result = run(tmp_path / "run", uri)
    assert result.test_score == 1.0
    assert mlflow.get_tracking_uri() == before  # the process's tracking URI is put back

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("flowbot")
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_name == "run" and mrun.info.status == "FINISHED"
    params = mrun.data.params
    assert params["model"] == "task" and params["optimizer_model"] == "optimizer"
    assert params["optimize.inner.steps"] == "1" and params["method"] == "flowbot"
    assert "seed_workflow" not in " ".join(params)
    metrics = mrun.data.metrics
    assert metrics["seed_val_score"] == 0.0 and metrics["best_val_score"] == 1.0
    assert metrics["test_score"] == 1.0 and metrics["seed_test_score"] == 0.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for role, u in summary["usage_by_role"].items():
        assert metrics[f"spend.{role}.calls"] == u["calls"]
        assert metrics[f"spend.{role}.usd"] == pytest.approx(u["cost_usd"])
    history = client.get_metric_history(mrun.info.run_id, "val_score")
    assert [m.value for m in history] == [c["val_score"] for c in summary["candidates"]]
    steps = [m.step for m in history]
    assert steps == sorted(steps) and steps[-1] > 0  # x: paid calls so far
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"best.json", "summary.json", "report.html", "events.jsonl"} <= artifacts

    traces = client.search_traces(locations=[exp.experiment_id], run_id=mrun.info.run_id, max_results=1000)
    assert traces
    paid_in_spans = 0
    kinds = set()
    for t in traces:
        root = [s for s in t.data.spans if s.parent_id is None]
        assert len(root) == 1 and root[0].span_type == "CHAIN"
        for s in t.data.spans:
            if s.parent_id is None:
                continue
            assert s.parent_id == root[0].span_id
            kinds.add(s.attributes["flowbot.kind"])
            if s.attributes["flowbot.kind"] == "llm":
                assert s.span_type == "LLM" and s.attributes["model"] == "task"
                assert s.inputs and "question" in s.inputs and s.outputs
                paid_in_spans += s.attributes["calls"] - s.attributes["cached_calls"]
                assert s.attributes["latency_s"] >= 0
                assert s.attributes["prompt_tokens"] > 0 or s.attributes["calls"] == 0  # a skipped fallback
    assert {"llm", "tool"} <= kinds  # the program-of-thought steps the edit added
    # every task-role call the meter paid for happened inside exactly one node span
    assert paid_in_spans == summary["usage_by_role"]["task"]["calls"]


def test_a_resumed_run_continues_its_mlflow_run_and_logs_nothing_twice(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(tmp_path / "run", uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("flowbot")
    (first,) = client.search_runs([exp.experiment_id])
    n_val = len(client.get_metric_history(first.info.run_id, "val_score"))
    again = run(tmp_path / "run", uri)
    assert again.resumed
    (second,) = client.search_runs([exp.experiment_id])
    assert second.info.run_id == first.info.run_id and second.info.status == "FINISHED"
    assert len(client.get_metric_history(first.info.run_id, "val_score")) == n_val


def test_a_run_stopped_early_and_resumed_with_more_budget_adds_to_its_mlflow_run(tmp_path):
    """Stopped (a STOP file) after its first structural proposal, then resumed with a larger budget:
    the same MLflow run gains the new candidates' scores, the test scores and the new spend, at
    later steps, and what the first session logged is not logged again."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "run"

    def stop_after_proposal(event):
        if event["type"] == "proposal":
            (path / "STOP").write_text("")

    first = run(path, uri, budget={"calls": 200}, callbacks=[stop_after_proposal])
    assert first.stopped and "stop file" in first.stopped and first.test_score is None
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("flowbot")
    (mrun,) = client.search_runs([exp.experiment_id])
    run_id = mrun.info.run_id
    assert "test_score" not in mrun.data.metrics and mrun.data.tags["flowbot.stopped"].startswith("stop file")

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    val_before, calls_before = history("val_score"), history("spend.task.calls")
    last_step = max(step for step, _ in calls_before)

    second = run(path, uri, budget={"calls": 400})
    assert second.resumed and second.stopped is None and second.test_score == 1.0
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    assert again.data.tags["flowbot.stopped"] == "no" and again.data.metrics["test_score"] == 1.0
    val_after, calls_after = history("val_score"), history("spend.task.calls")
    assert val_after[:len(val_before)] == val_before  # nothing logged twice ...
    new = val_after[len(val_before):]
    assert new and all(step > last_step for step, _ in new)  # ... and the new candidates at later steps
    summary = json.loads((path / "summary.json").read_text())
    assert [v for _, v in val_after] == [c["val_score"] for c in summary["candidates"]]
    assert calls_after[-1] == (max(s for s, _ in calls_after), summary["usage_by_role"]["task"]["calls"])
    assert len(calls_after) > len(calls_before)


def test_the_state_file_is_written_atomically(tmp_path, monkeypatch):
    """A reader (or a kill) never sees half of mlflow.json: it is renamed over the old one."""
    import os

    from flowbot.integrations.mlflow import STATE_FILE, MlflowRun

    renamed = []
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        renamed.append((str(src), str(dst)))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mrun = MlflowRun.open(run_dir, {"task": "mult", "method": "flowbot"}, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    mrun.finish()
    state = run_dir / STATE_FILE
    assert json.loads(state.read_text())["run_id"] == mrun.run_id
    assert any(dst == str(state) and src != dst and os.path.dirname(src) == str(run_dir) for src, dst in renamed)
    assert not list(run_dir.glob(".*.tmp"))


def test_mlflow_turns_on_with_the_tracking_uri_and_off_when_told(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # off by default: whatever the machine has set
    assert not mlflow_enabled(None) and not mlflow_enabled(False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert mlflow_enabled(None) and not mlflow_enabled(False) and mlflow_enabled(True)
    run(tmp_path / "auto", None, budget={"calls": 30})
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'env.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("flowbot").experiment_id])) == 1


def test_settings_flatten_to_params():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": None, "f": {}}) == {"a.b": "1", "a.c.d": "x", "e": "null",
                                                                            "f": "{}"}
    assert len(flatten({"long": "x" * 10_000})["long"]) == 500


def test_the_cli_flag_logs_a_run(tmp_path):
    from typer.testing import CliRunner

    from flowbot.cli.main import app
    from flowbot.testing import OpenAITestServer

    rows = tmp_path / "d.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in products(20, 0)))
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    with OpenAITestServer(reply="Answer: 7") as srv:
        res = CliRunner().invoke(app, ["optimize", "--data", str(rows), "--input", "question", "--target", "answer",
                                       "--metric", "numeric", "--model", "served", "--base-url", srv.base_url,
                                       "--steps", "0", "--rounds", "0", "--train-size", "4", "--val-size", "3",
                                       "--run-dir", str(tmp_path / "run"), "--mlflow-uri", uri])
    assert res.exit_code == 0, res.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    (mrun,) = client.search_runs([client.get_experiment_by_name("flowbot").experiment_id])
    assert mrun.data.params["model"] == "served" and mrun.data.tags["flowbot.stopped"] == "no"
    assert "report.html" in {a.path for a in client.list_artifacts(mrun.info.run_id)}
