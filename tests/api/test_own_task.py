"""Bring your own task: a task FlowBot has never seen, optimized through the Python API and through
the CLI (over real HTTP to a scripted OpenAI-compatible server), then saved, loaded, exported and run
four ways with identical outputs."""

import importlib.util
import json
import re

import pytest
from typer.testing import CliRunner

import flowbot
from flowbot.cli.main import app
from flowbot.testing import OpenAITestServer, ScriptedLM, optimizer_prompt, prompt_fields, which_prompt

RULE = "NEGATION RULE"
FEEDBACK = "the text negates its sentiment word"

ROWS = []
for i, (word, label) in enumerate([("good", "positive"), ("bad", "negative")] * 12):
    negated = i % 3 == 0
    text = f"review {i}: the film was {'not ' if negated else ''}{word}"
    flipped = {"positive": "negative", "negative": "positive"}[label] if negated else label
    ROWS.append({"text": text, "label": flipped})

METRIC_SOURCE = f'''
def score(example, prediction):
    ok = str(prediction.get("label", "")).lower() == example["label"]
    if ok:
        return 1.0, ""
    hint = "{FEEDBACK}" if " not " in example["text"] else "wrong label"
    return 0.0, f"{{hint}}: expected {{example['label']}}"
'''


def brain(messages: list[dict]) -> str:
    """One scripted model for both roles: the task model (sentiment) and the optimizer."""
    system, user = messages[0]["content"], messages[-1]["content"]
    prompt = which_prompt(messages)
    if prompt == "loss":
        return f"The label is wrong. {prompt_fields('loss', messages)['metric_feedback'].strip()}"
    if prompt == "backward":
        return f"GRADIENT: handle negation: add a {RULE}."
    if prompt == "aggregate":
        return f"- add a {RULE}"
    if prompt == "rewrite":
        return f"<instruction>Classify the sentiment of the text. {RULE}: 'not' flips the sentiment.</instruction>"
    if prompt == "edit":
        return '{"critique": "one sample is noisy; vote", "edit": {"op": "self_consistency", "target": "solve", "k": 3}}'
    assert prompt is None, f"no scripted reply for the optimizer's {prompt!r} prompt"
    text = re.search(r"Text:\n(.*)", user).group(1)
    positive = " good" in text
    if RULE in system and " not " in text:
        positive = not positive
    return "Answer: " + ("positive" if positive else "negative")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    metric = tmp_path / "my_metric.py"
    metric.write_text(METRIC_SOURCE, encoding="utf-8")
    return path, metric


def make_task(path, metric):
    return flowbot.Task("reviews", data=str(path), inputs=["text"], targets=["label"],
                        metric=f"{metric}:score", labels=["positive", "negative"], split=(0.5, 0.25, 0.25),
                        description="label the sentiment of a short review")


class Brain(ScriptedLM):
    def __init__(self, model):
        super().__init__(default=lambda req, i: brain(req.message_dicts()), model=model)


def test_python_api_end_to_end(data, tmp_path):
    path, metric = data
    task = make_task(path, metric)
    task_lm, opt_lm = Brain("task"), Brain("opt")
    events = []
    result = flowbot.optimize(task, seed="cot", model="task", optimizer_model="opt", budget={"calls": 400},
                              run_dir=tmp_path / "run", callbacks=[events.append],
                              providers={"task": task_lm, "opt": opt_lm}, train_size=12, val_size=6,
                              inner={"steps": 2, "demos": 0}, outer={"rounds": 1})
    # the metric's own feedback text reached the textual loss
    losses = [r for r in opt_lm.calls if optimizer_prompt("loss")(r)]
    assert losses and any(FEEDBACK in r.messages[-1][1] for r in losses)
    assert result.val_score > result.seed_val_score
    assert result.test_score > result.summary["seed_test"]["score"]
    assert RULE in json.dumps(result.best.model_dump())
    assert {e["type"] for e in events} >= {"run_started", "inner_candidate", "candidate_evaluated", "run_finished"}

    saved = result.best.save(tmp_path / "best.json")
    loaded = flowbot.load(saved)
    loaded.bind(lm=__import__("flowbot.lm", fromlist=["LMClient"]).LMClient(Brain("task")))
    negated = {"text": "review 99: the film was not good"}
    assert loaded(**negated) == {"label": "negative"}
    outputs, trace = loaded(negated, trace=True)
    assert outputs == {"label": "negative"} and trace.calls >= 1

    ev = flowbot.evaluate(loaded, task, split="test", providers={"task": Brain("task")}, model="task")
    assert ev.score == result.test_score and ev.n == len(task.examples("test"))


def test_cli_end_to_end_over_http(data, tmp_path, monkeypatch):
    path, metric = data
    runner = CliRunner()
    with OpenAITestServer(reply=lambda body: brain(body["messages"])) as srv:
        base = ["--model", "scripted", "--base-url", srv.base_url]
        run_dir = tmp_path / "cli-run"
        args = ["optimize", "--data", str(path), "--input", "text", "--target", "label", "--metric",
                f"{metric}:score", "--labels", "positive,negative", "--run-dir", str(run_dir), "--steps", "2",
                "--rounds", "1", "--demos", "0", "--train-size", "12", "--val-size", "6", "--budget-calls", "400",
                "--no-report", *base]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "best workflow" in res.output and "usage by role" in res.output
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["best"]["val_score"] > summary["seed"]["val_score"]
        best = run_dir / "best.json"

        # the same command again resumes and pays for nothing new
        before = srv.request_count
        again = runner.invoke(app, args)
        assert again.exit_code == 0, again.output
        assert srv.request_count == before
        assert "resuming" in again.output

        # one input, four ways: CLI, sync call, arun, exported module
        negated = {"text": "review 7: the film was not bad"}
        cli = runner.invoke(app, ["run", str(best), "--input", json.dumps(negated), *base])
        assert cli.exit_code == 0, cli.output
        cli_out = json.loads(cli.output[cli.output.index("{"):cli.output.rindex("}") + 1])
        wf = flowbot.load(best, model="scripted", base_url=srv.base_url)
        sync_out = wf(**negated)
        import asyncio

        async_out = asyncio.run(wf.arun(**negated))
        module_path = tmp_path / "pipeline.py"
        exp = runner.invoke(app, ["export", str(best), "--python", str(module_path)])
        assert exp.exit_code == 0, exp.output
        spec = importlib.util.spec_from_file_location("pipeline", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        exported_out = module._workflow.bind("scripted", base_url=srv.base_url)(**negated)
        assert cli_out == sync_out == async_out == exported_out == {"label": "positive"}

        # eval with the custom task from the shell
        ev = runner.invoke(app, ["eval", "--data", str(path), "--input", "text", "--target", "label", "--metric",
                                 f"{metric}:score", "--workflow", str(best), "--split", "test",
                                 "--out", str(tmp_path / "eval.json"), *base])
        assert ev.exit_code == 0, ev.output
        payload = json.loads((tmp_path / "eval.json").read_text())
        assert payload["results"][0]["examples"][0]["trace"]["nodes"]


def test_bad_inputs_give_clear_errors(data, tmp_path):
    path, metric = data
    runner = CliRunner()
    res = runner.invoke(app, ["optimize", "--data", str(path), "--input", "body", "--target", "label", "--dry-run"])
    assert res.exit_code == 2 and "missing input field 'body'" in res.output and "reviews.jsonl, line 1" in res.output
    res = runner.invoke(app, ["optimize", "--data", str(path), "--input", "text", "--target", "label",
                              "--metric", "nowhere_module:score", "--dry-run"])
    assert res.exit_code == 2 and "cannot import module 'nowhere_module'" in res.output
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"format": "flowbot-workflow", "schema_version": 7, "flowbot_version": "9.9",
                               "sketch": {"inputs": [], "outputs": [], "nodes": []}}))
    res = runner.invoke(app, ["run", str(bad), "--input", "{}"])
    assert res.exit_code == 2 and "schema 7" in res.output
    res = runner.invoke(app, ["show", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_dry_run_prints_projection_and_pays_nothing(data, tmp_path):
    path, metric = data
    with OpenAITestServer(reply="x") as srv:
        res = CliRunner().invoke(app, ["optimize", "--data", str(path), "--input", "text", "--target", "label",
                                       "--metric", f"{metric}:score", "--dry-run", "--budget-calls", "3",
                                       "--model", "m", "--base-url", srv.base_url])
        # a budget that cannot pay for one candidate is refused before anything is paid or written
        assert res.exit_code == 2, res.output
        assert "projected cost" in res.output and "cannot pay for one structural candidate" in res.output
        assert srv.request_count == 0 and not list(tmp_path.glob("runs"))
        res = CliRunner().invoke(app, ["optimize", "--data", str(path), "--input", "text", "--target", "label",
                                       "--metric", f"{metric}:score", "--dry-run", "--budget-calls", "400",
                                       "--model", "m", "--base-url", srv.base_url])
        assert res.exit_code == 0, res.output
        assert "candidate(s) with a full raced validation" in res.output and srv.request_count == 0


def test_eval_reuses_a_run_cache(data, tmp_path):
    """Re-scoring a run's best workflow with ``eval --run-dir`` pays nothing already paid; a fresh
    cache file pays again, and ``--cache`` names any cache file."""
    path, metric = data
    runner = CliRunner()
    with OpenAITestServer(reply=lambda body: brain(body["messages"])) as srv:
        base = ["--model", "scripted", "--base-url", srv.base_url]
        task_opts = ["--data", str(path), "--input", "text", "--target", "label", "--metric", f"{metric}:score",
                     "--labels", "positive,negative"]
        run_dir = tmp_path / "run"
        res = runner.invoke(app, ["optimize", *task_opts, "--run-dir", str(run_dir), "--steps", "1", "--rounds", "0",
                                  "--demos", "0", "--train-size", "12", "--val-size", "6", "--no-report", *base])
        assert res.exit_code == 0, res.output
        before = srv.request_count
        ev = [*task_opts, "--split", "test", "--workflow", str(run_dir / "best.json"), *base]
        again = runner.invoke(app, ["eval", *ev, "--run-dir", str(run_dir), "--out", str(tmp_path / "e1.json")])
        assert again.exit_code == 0, again.output
        assert srv.request_count == before
        fresh = runner.invoke(app, ["eval", *ev, "--cache", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "e2.json")])
        assert fresh.exit_code == 0, fresh.output
        assert srv.request_count > before
        first = json.loads((tmp_path / "e1.json").read_text())["results"][0]
        second = json.loads((tmp_path / "e2.json").read_text())["results"][0]
        assert first["score"] == second["score"] and first["n"] == second["n"] > 0
        bad = runner.invoke(app, ["eval", *ev, "--run-dir", str(tmp_path)])
        assert bad.exit_code != 0 and "not a run directory" in bad.output
