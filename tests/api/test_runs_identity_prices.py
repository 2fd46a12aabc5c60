"""Run identity with resolved model names (and old runs that still resume), money caps that cannot
silently be off, ``flowbot runs``, and ``eval --run-dir`` defaults — on real run directories made
with scripted models and a real local HTTP server."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowbot
from flowbot.api import default_run_dir, prepare_run
from flowbot.cli.main import app, command_settings
from flowbot.lm import LMRequest
from flowbot.lm.pricing import PER_MILLION, UnknownPrice, parse_price, per_token_prices, require_prices
from flowbot.lm.resolve import EMBEDDED_DEFAULT, HOSTED_DEFAULTS
from flowbot.report.runs import list_runs, resume_command, run_info
from flowbot.tasks import Task
from flowbot.testing import OpenAITestServer, ScriptedLM


def products(n: int, start: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"{1000 + 37 * i}*{300 + 11 * i}", "answer": str((1000 + 37 * i) * (300 + 11 * i))}
            for i in range(start, start + n)]


def mult_task() -> Task:
    return Task("mult", train=products(6, 0), val=products(4, 100), test=products(4, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers")


def half_right(req: LMRequest, i: int) -> str:
    a, b = map(int, re.findall(r"(\d+)\*(\d+)", req.messages[-1][1])[-1])
    return f"Answer: {a * b if a % 2 == 0 else 42}"


SMALL = dict(train_size=6, val_size=4, inner={"steps": 0}, outer={"rounds": 0})


# -- identity ---------------------------------------------------------------------------------
def test_the_same_command_with_and_without_a_key_is_another_run(monkeypatch):
    task = mult_task()
    local = prepare_run(task, **SMALL)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    hosted = prepare_run(task, **SMALL)
    assert local.settings["model"] == local.settings["optimizer_model"] == EMBEDDED_DEFAULT
    assert hosted.settings["model"] == "gpt-4o-mini"
    assert local.run_dir != hosted.run_dir


def test_a_run_started_before_names_were_resolved_resumes_as_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    providers = {EMBEDDED_DEFAULT: ScriptedLM(default=half_right, model=f"local/{EMBEDDED_DEFAULT}")}
    first = prepare_run(mult_task(), providers=providers, **SMALL)
    flowbot.api.run_sync(first.arun())
    # rewrite it as an older FlowBot left it: placeholders in config.json, directory named by their hash
    config = json.loads((first.run_dir / "config.json").read_text())
    config["config"].update(model="(default)", optimizer_model="(same as model)")
    legacy_settings = {k: v for k, v in config["config"].items() if k != "budget"}
    old_dir = default_run_dir(first.task, "flowbot", legacy_settings)
    assert old_dir != first.run_dir
    (first.run_dir / "config.json").write_text(json.dumps(config))
    first.run_dir.rename(old_dir)

    again = prepare_run(mult_task(), providers=providers, **SMALL)
    assert again.run_dir == old_dir and again.settings["model"] == "(default)"
    result = flowbot.api.run_sync(again.arun())
    assert result.resumed and result.usage["task"]["replayed_calls"] == result.usage["task"]["calls"] > 0
    explicit = prepare_run(mult_task(), providers=providers, run_dir=old_dir, **SMALL)
    assert explicit.settings["model"] == "(default)"
    # another model in the same directory is another run: refused, naming the setting
    other = prepare_run(mult_task(), model="other", providers={"other": ScriptedLM(default="Answer: 1", model="other")},
                        run_dir=old_dir, **SMALL)
    with pytest.raises(ValueError, match="other settings.*model"):
        flowbot.api.run_sync(other.arun())


def test_best_json_records_model_scores_and_version_and_export_shows_them(tmp_path):
    result = flowbot.optimize(mult_task(), model="task", providers={"task": ScriptedLM(default=half_right, model="task")},
                              run_dir=tmp_path / "run", **SMALL)
    tuned = json.loads((tmp_path / "run" / "best.json").read_text())["meta"]["tuned"]
    assert tuned["task_model"] == tuned["optimizer_model"] == "task"
    assert tuned["val_score"] == result.val_score == 0.5 and tuned["test_score"] == result.test_score
    assert tuned["flowbot_version"] == flowbot.__version__ and tuned["run_id"]
    assert result.best.meta["tuned"] == tuned
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "best.json"), "--python", str(tmp_path / "m.py")])
    assert res.exit_code == 0, res.output
    module = (tmp_path / "m.py").read_text()
    assert "Tuned on model task" in module and "validation 0.500" in module and flowbot.__version__ in module
    assert tuned["test_score"] == result.test_score == 0.5 and tuned["test_n"] == 4
    assert "test 0.500 (seed 0.500, n=4)" in module  # the test score the run measured, in the module
    rows = [json.loads(line) for line in (tmp_path / "run" / "test_examples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in mult_task().examples("test")]
    assert all(r["best"]["trace"]["nodes"] and r["seed"]["score"] == r["best"]["score"] for r in rows)


# -- prices -----------------------------------------------------------------------------------
def test_price_options_parse_or_say_what_is_wrong():
    assert parse_price("org/model:v1=0.15/0.6") == ("org/model:v1", (0.15 * PER_MILLION, 0.6 * PER_MILLION))
    for bad, hint in (("gpt-4o-mini", "expected MODEL=IN/OUT"), ("m=1", "expected MODEL=IN/OUT"),
                      ("m=a/b", "must be numbers"), ("m=-1/2", "negative")):
        with pytest.raises(ValueError, match=hint):
            parse_price(bad)
    assert per_token_prices({"m": (1, 2), "n": "3/4"}) == {"m": (1e-6, 2e-6), "n": (3e-6, 4e-6)}
    require_prices(None, {"task": ("m", None)})  # no dollar cap: nothing to check
    with pytest.raises(UnknownPrice, match=r"model 'm' \(optimizer\) is unknown.*--price m=IN/OUT"):
        require_prices(5.0, {"task": ("a", (0.0, 0.0)), "optimizer": ("m", None)})


def test_a_dollar_budget_on_an_unpriced_server_is_refused_unless_priced(tmp_path):
    rows = tmp_path / "d.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in products(20, 0)))
    runner = CliRunner()
    with OpenAITestServer(reply="Answer: 1") as srv:
        base = ["optimize", "--data", str(rows), "--input", "question", "--target", "answer", "--metric", "numeric",
                "--model", "served", "--base-url", srv.base_url, "--budget-usd", "1", "--dry-run"]
        refused = runner.invoke(app, base)
        assert refused.exit_code == 2
        assert "price of model 'served' (task) is unknown" in refused.output and "--price served=IN/OUT" in refused.output
        priced = runner.invoke(app, [*base, "--price", "served=0.5/1.5"])
        assert priced.exit_code == 0, priced.output
        assert "$" in priced.output.split("projected cost")[1]
        bad = runner.invoke(app, [*base, "--price", "served=cheap"])
        assert bad.exit_code == 2 and "expected MODEL=IN/OUT" in bad.output
        assert srv.request_count == 0


def test_evaluate_prices_calls_with_the_given_price_and_refuses_without(tmp_path):
    task = mult_task()
    with pytest.raises(UnknownPrice, match="model 'm' \\(task\\)"):
        flowbot.evaluate("cot", task, model="m", providers={"m": ScriptedLM(default=half_right, model="m")},
                         budget={"usd": 1}, cache=False)
    ev = flowbot.evaluate("cot", task, model="m", providers={"m": ScriptedLM(default=half_right, model="m")},
                          budget={"usd": 1}, cache=False, prices={"m": (2.0, 10.0)})
    u = ev.usage["task"]
    assert ev.cost_usd == pytest.approx(u["cost_usd"]) == pytest.approx(
        u["prompt_tokens"] * 2e-6 + u["completion_tokens"] * 10e-6) and u["cost_usd"] > 0


def test_every_default_hosted_model_is_priced_by_litellms_bundled_map():
    import importlib.util

    if importlib.util.find_spec("litellm") is None:  # not importorskip: flowbot imports it without a network fetch
        pytest.skip("litellm (the hosted extra) prices hosted models")
    from flowbot.lm.litellm_provider import LiteLLMProvider

    for _, model in HOSTED_DEFAULTS:
        price = LiteLLMProvider(model).price_per_token()
        assert price is not None and price[0] > 0 and price[1] > 0, model


# -- flowbot runs -----------------------------------------------------------------------------
def make_run(path, **kw):
    options = dict(model="task", providers={"task": ScriptedLM(default=half_right, model="task")}, run_dir=path, **SMALL)
    options.update(kw)
    return flowbot.optimize(mult_task(), **options)


def test_runs_lists_status_models_scores_spend_and_how_to_resume(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    make_run(root / "finished")
    stop = root / "stopped" / "STOP"
    make_run(root / "stopped", callbacks=[lambda e: stop.write_text("") if e["type"] == "seed_evaluated" else None])
    make_run(root / "nested" / "interrupted")
    for name in ("summary.json",):
        (root / "nested" / "interrupted" / name).unlink()
    log = root / "nested" / "interrupted" / "events.jsonl"
    log.write_text("\n".join(l for l in log.read_text().splitlines() if '"run_finished"' not in l)
                   + '\n{"type": "from_the_future", "seq": 99}\n{"torn": ')
    old = time.time() - 3600
    for f in (root / "nested" / "interrupted").iterdir():
        os.utime(f, (old, old))
    make_run(root / "running")
    make_run(root / "crashed")
    (root / "crashed" / "run.lock").write_text("999999999")
    make_run(root / "stale")  # a lock file naming a live pid (ours), held by no one: not running
    (root / "stale" / "run.lock").write_text(json.dumps({"pid": os.getpid()}))
    (root / "not-a-run").mkdir()
    holder = subprocess.Popen(  # a real live lock, held by another process
        [sys.executable, "-c", "import sys\nfrom flowbot.optim.rundir import RunDir\n"
         f"rd = RunDir({str(root / 'running')!r})\nprint('ready', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(flowbot.__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "ready"
        found = {r.path.name: r for r in list_runs(root)}
        listed = CliRunner().invoke(app, ["runs", str(root)])
        as_json = json.loads(CliRunner().invoke(app, ["runs", str(root), "--json"]).output)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert f"running: flowbot (pid {holder.pid} on " in listed.output
    assert found["running"].holder.startswith(f"flowbot (pid {holder.pid} on ")
    assert {r["status"] for r in as_json} == {"finished", "stopped", "interrupted", "running"}
    assert run_info(root / "running").status == "finished"  # the lock went with its process
    assert set(found) == {"finished", "stopped", "interrupted", "running", "crashed", "stale"}
    assert {k: r.status for k, r in found.items()} == {
        "finished": "finished", "stopped": "stopped", "interrupted": "interrupted", "running": "running",
        "crashed": "finished", "stale": "finished"}
    fin = found["finished"]
    assert (fin.task, fin.method, fin.task_model, fin.optimizer_model) == ("mult", "flowbot", "task", "task")
    assert (fin.seed_val, fin.best_val, fin.best_id, fin.seed_test, fin.test) == (0.5, 0.5, "c0", 0.5, 0.5)
    summary = json.loads((root / "finished" / "summary.json").read_text())
    assert fin.calls == sum(u["calls"] for u in summary["usage_by_role"].values()) > 0
    assert "stop file" in found["stopped"].stopped
    intr = found["interrupted"]
    assert intr.seed_val == 0.5 and intr.calls > 0  # from the log alone
    assert fin.command is None  # started from Python

    out = CliRunner().invoke(app, ["runs", str(root)])
    assert out.exit_code == 0, out.output
    assert "interrupted" in out.output and "flowbot.optimize(..., run_dir=" in out.output


def test_a_resume_command_goes_back_to_its_folder_only_if_that_folder_still_exists(tmp_path, monkeypatch):
    started_in, here = tmp_path / "checkout", tmp_path / "here"
    started_in.mkdir()
    (here / "runs" / "r").mkdir(parents=True)
    monkeypatch.chdir(here)
    config = {"command": "flowbot optimize --task drop --data-dir ../data --run-dir runs/r", "cwd": str(started_in)}
    line, rebuilt = resume_command(Path("runs/r"), config, {})
    # back to where ../data was read, and the run dir given whole: runs/r would not be found from there
    assert not rebuilt and line == (f"cd {started_in} && flowbot optimize --task drop --data-dir ../data "
                                    f"--run-dir {here / 'runs' / 'r'}")
    started_in.rmdir()  # that checkout is gone: the line runs from here, as the run dir was given
    line, _ = resume_command(Path("runs/r"), config, {})
    assert line == "flowbot optimize --task drop --data-dir ../data --run-dir runs/r"


def test_a_cli_run_records_its_command_and_a_benchmark_run_gets_a_rebuilt_one(tmp_path, monkeypatch):
    """Both resume commands are run: each resumes its run and pays for nothing new."""
    def brain(body):
        return "Answer: 42"

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    with OpenAITestServer(reply=brain) as srv:
        base = ["--model", "served", "--base-url", srv.base_url]
        args = ["optimize", "--task", "gsm8k", *base, "--train-size", "3", "--val-size", "2", "--test-size", "2",
                "--steps", "0", "--rounds", "0", "--budget-calls", "40", "--no-report"]
        monkeypatch.setattr(sys, "argv", ["flowbot", *args])
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        (cli_run,) = list_runs("runs")
        assert cli_run.status == "finished" and cli_run.task_model == "served" and not cli_run.command_rebuilt
        assert cli_run.command.startswith("flowbot optimize --task gsm8k") and "--run-dir" in cli_run.command

        py_dir = tmp_path / "py-run"
        flowbot.optimize("gsm8k", model="served", base_url=srv.base_url, run_dir=py_dir, train_size=3, val_size=2,
                         test_size=2, inner={"steps": 0}, outer={"rounds": 0}, budget={"calls": 40})
        py_run = run_info(py_dir)
        assert py_run.command_rebuilt and "--budget-calls 40" in py_run.command

        before = srv.request_count
        for command in (cli_run.command, py_run.command):
            again = runner.invoke(app, shlex.split(command)[1:] + ["--no-report"])
            assert again.exit_code == 0, (command, again.output)
            assert "resuming" in again.output
        assert srv.request_count == before

        # eval --run-dir alone: the run's task, model, server, seed and best workflow; all cached
        ev = runner.invoke(app, ["eval", "--run-dir", str(py_dir), "--split", "test", "--limit", "2",
                                 "--out", str(tmp_path / "e.json")])
        assert ev.exit_code == 0, ev.output
        payload = json.loads((tmp_path / "e.json").read_text())["results"][0]
        assert payload["task"] == "gsm8k" and payload["model"] == "served" and payload["n"] == 2
        assert payload["usage"]["task"]["calls"] == 0 and srv.request_count == before


def test_the_resume_command_of_a_no_test_run_resumes_it(tmp_path, monkeypatch):
    """A run without a test evaluation, with no test items and the search-only budget scope (as
    results/smoke was made): its rebuilt command says so, and running it resumes the run."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    with OpenAITestServer(reply="Answer: 42") as srv:
        flowbot.optimize("gsm8k", model="served", base_url=srv.base_url, run_dir=tmp_path / "run", train_size=3,
                         val_size=2, test_size=0, evaluate_test=False, budget_scope="search", inner={"steps": 0},
                         outer={"rounds": 0}, budget={"calls": 40})
        info = run_info(tmp_path / "run")
        args = shlex.split(info.command)
        assert info.command_rebuilt and "--no-test" in args and "--budget-scope" in args
        assert args[args.index("--test-size") + 1] == "0"
        before = srv.request_count
        again = runner.invoke(app, args[1:] + ["--no-report"])
        assert again.exit_code == 0, again.output
        assert "resuming" in again.output and srv.request_count == before
        # a test split of 0 items is refused when the test is evaluated
        refused = runner.invoke(app, [a for a in args[1:] if a != "--no-test"] + ["--no-report"])
        assert refused.exit_code == 2 and "--test-size" in refused.output


def test_the_rebuilt_command_keeps_the_inner_step_its_guard_its_demos_and_the_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with OpenAITestServer(reply="Answer: 42") as srv:
        inner = {"steps": 0, "step": "rule", "specificity_guard": False, "demo_sets": 3, "demo_bootstrap": 7,
                 "demo_teacher": "optimizer"}
        flowbot.optimize("gsm8k", model="served", base_url=srv.base_url, run_dir=tmp_path / "run", train_size=3,
                         val_size=2, test_size=2, inner=inner,
                         outer={"rounds": 0, "schedule": "alternate"}, budget={"calls": 40})
        info = run_info(tmp_path / "run", command_settings)
        args = shlex.split(info.command)
        assert args[args.index("--step") + 1] == "rule" and "--no-specificity-guard" in args
        assert args[args.index("--demo-sets") + 1] == "3" and args[args.index("--demo-bootstrap") + 1] == "7"
        assert args[args.index("--demo-teacher") + 1] == "optimizer"
        assert args[args.index("--schedule") + 1] == "alternate" and info.not_resumable is None
        before = srv.request_count
        again = CliRunner().invoke(app, args[1:] + ["--no-report"])
        assert again.exit_code == 0 and "resuming" in again.output, again.output
        assert srv.request_count == before


def _age_settings(run, edit):
    """Rewrite a run's saved settings as an older FlowBot left them."""
    config = json.loads((run / "config.json").read_text())
    edit(config["config"]["optimize"])
    (run / "config.json").write_text(json.dumps(config))


def _before_racing(opt):
    del opt["racing"]
    opt["outer"].update(edit_max_tokens=600, patience=3)


def test_runs_says_which_runs_this_version_cannot_resume(tmp_path, monkeypatch):
    """A run whose saved settings today's code would refuse on resume (here: made before racing
    existed, with other defaults, as results/gsm8k was) gets no resume command but the settings
    that changed; the command it would have printed is indeed refused, naming the same settings."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    with OpenAITestServer(reply="Answer: 42") as srv:
        args = ["optimize", "--task", "gsm8k", "--model", "served", "--base-url", srv.base_url, "--train-size", "3",
                "--val-size", "2", "--test-size", "2", "--steps", "0", "--rounds", "0", "--budget-calls", "40",
                "--no-report", "--run-dir", "runs/cli"]
        monkeypatch.setattr(sys, "argv", ["flowbot", *args])
        assert runner.invoke(app, args).exit_code == 0
        flowbot.optimize("gsm8k", model="served", base_url=srv.base_url, run_dir="runs/rebuilt", train_size=3,
                         val_size=2, test_size=2, inner={"steps": 0}, outer={"rounds": 0}, budget={"calls": 40})
        make_run(tmp_path / "runs" / "python")
        make_run(tmp_path / "runs" / "python-legacy")
        assert all(r.not_resumable is None for r in list_runs("runs", command_settings))  # today's runs resume

        for name in ("cli", "rebuilt", "python"):
            _age_settings(tmp_path / "runs" / name, _before_racing)
        # a setting added since, whose legacy value reproduces the old behaviour, does not count
        _age_settings(tmp_path / "runs" / "python-legacy", lambda opt: opt["outer"].pop("schedule"))
        found = {r.path.name: r for r in list_runs("runs", command_settings)}
        changed = "settings changed: optimize.outer.edit_max_tokens, optimize.outer.patience, optimize.racing"
        for name in ("cli", "rebuilt"):
            assert found[name].not_resumable == f"not resumable with this version ({changed})", name
        # from Python the old values can be given again; a section this version adds cannot be left out
        assert found["python"].not_resumable == "not resumable with this version (settings changed: optimize.racing)"
        assert found["python-legacy"].not_resumable is None

        out = runner.invoke(app, ["runs", "runs"]).output
        lines = [line for line in out.splitlines() if line.startswith("#")]
        assert sum(f"not resumable with this version ({changed})" in line for line in lines) == 2
        assert sum("not resumable with this version" in line for line in lines) == 3
        assert len([line for line in lines if "resume:" in line]) == 1  # python-legacy only
        assert json.loads(runner.invoke(app, ["runs", "runs", "--json"]).output)[0]["not_resumable"]

        before = srv.request_count
        for name in ("cli", "rebuilt"):
            refused = runner.invoke(app, shlex.split(found[name].command)[1:])
            assert refused.exit_code != 0 and "other settings (optimize.outer.edit_max_tokens, optimize.outer." \
                "patience, optimize.racing)" in refused.output, refused.output
        assert srv.request_count == before


def test_a_resume_command_that_no_longer_parses_is_not_offered(tmp_path):
    make_run(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["command"] = "flowbot optimize --task gsm8k --option-of-long-ago 3"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    info = run_info(tmp_path / "run", command_settings)
    assert info.not_resumable.startswith("not resumable with this version (its command line does not parse: ")
    assert "--option-of-long-ago" in info.not_resumable


def test_the_committed_runs_made_before_racing_are_flagged():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "results" / "gsm8k"
    found = list_runs(root, command_settings)
    assert {r.path.name for r in found} == {"flowbot", "aflow", "inner-only"}
    assert all(r.not_resumable and "optimize.racing" in r.not_resumable for r in found)
