"""Issue 13, holes 1 and 2: a permanent LM error or a broken metric stops an evaluation or a run at
once, as one line and a non-zero exit, instead of scoring a table of zeros."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import flowbot
from flowbot.cli.main import app
from flowbot.errors import MetricFailure
from flowbot.graph import LLMNode, Sketch, Workflow
from flowbot.lm import LMClient, LMPermanentError
from flowbot.runtime.batch import evaluate_examples
from flowbot.runtime.executor import Executor
from flowbot.testing import ScriptedLM
from flowbot.testing import Fault, OpenAITestServer

PERMANENT = {"bad key": Fault.bad_key(), "unknown model": Fault.unknown_model(),
             "context too long": Fault.context_too_long(), "quota": Fault.quota()}


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(24)))
    return path


def eval_args(data, srv, *extra: str) -> list[str]:
    return ["eval", "--data", str(data), "--input", "q", "--target", "a", "--metric", "numeric",
            "--model", "m", "--base-url", srv.base_url, "--out", "e.json", *extra]


def one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


# -- hole 1: permanent LM errors ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", PERMANENT)
def test_eval_stops_at_the_first_permanent_error(data, kind):
    with OpenAITestServer(reply="Answer: 1", fault_rule=lambda body: PERMANENT[kind]) as srv:
        res = CliRunner().invoke(app, eval_args(data, srv, "--concurrency", "1"))
        assert srv.request_count == 1  # not one request per example
    assert res.exit_code != 0
    line = one_error_line(res)
    assert PERMANENT[kind].message.split()[0] in line
    assert not (data.parent / "e.json").exists()  # no table of zeros written


def test_in_flight_requests_are_all_that_is_paid_after_a_permanent_error(data):
    with OpenAITestServer(reply="Answer: 1", latency_s=0.05, fault_rule=lambda body: Fault.bad_key()) as srv:
        res = CliRunner().invoke(app, eval_args(data, srv, "--concurrency", "4"))
        assert srv.request_count <= 4
    assert res.exit_code != 0


def test_optimize_stops_at_the_first_permanent_error(data):
    with OpenAITestServer(reply="Answer: 1", fault_rule=lambda body: Fault.unknown_model()) as srv:
        res = CliRunner().invoke(app, ["optimize", "--data", str(data), "--input", "q", "--target", "a",
                                       "--metric", "numeric", "--model", "m", "--base-url", srv.base_url,
                                       "--concurrency", "1", "--run-dir", "run", "--no-report"])
        assert srv.request_count == 1
    assert res.exit_code != 0 and "not found" in one_error_line(res)


async def test_batch_raises_the_permanent_error_and_cancels_the_rest():
    wf = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[LLMNode(id="ans", reads=["q"], writes="a")]))
    provider = ScriptedLM(rules=[("boom", "x")])  # no reply for other inputs: a permanent error
    examples = [{"q": "boom"}] + [{"q": f"other {i}"} for i in range(9)]
    with pytest.raises(LMPermanentError, match="no reply"):
        await evaluate_examples(Executor(LMClient(provider)), wf, examples, lambda e, p: 1.0, concurrency=1)
    assert len(provider.calls) == 2  # the good one, then the first failure; nothing after it


# -- an unreachable server -------------------------------------------------------------------------
@pytest.fixture
def dead_url(monkeypatch):
    """A local port nothing listens on; retries without their backoff waits (the CLI runs in-process)."""
    import socket

    from flowbot.lm.retry import RetryPolicy

    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, retry_after: 0.001)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("command", ["eval", "optimize"])
def test_an_unreachable_server_stops_with_one_line_naming_it(data, dead_url, command):
    args = [command, "--data", str(data), "--input", "q", "--target", "a", "--metric", "numeric", "--model", "m",
            "--base-url", dead_url, "--concurrency", "2"]
    args += ["--out", "e.json"] if command == "eval" else ["--run-dir", "run", "--no-report"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    line = one_error_line(res)
    assert f"cannot reach {dead_url}" in line and "could connect" in line
    assert "0.000" not in res.stdout  # never a table of zeros
    assert not (data.parent / "e.json").exists() and not (data.parent / "run").exists()


async def test_retries_tell_an_unreachable_server_from_a_flaky_one():
    from flowbot.lm import LMConnectionError, LMTransientError, LMUnreachable, RetryPolicy

    policy = RetryPolicy(max_attempts=3, base_delay=0.0001, max_delay=0.001)

    def failing(*errors):
        it = iter(errors)

        async def attempt():
            raise next(it)
        return attempt

    refused = LMConnectionError("connection to http://h:1/v1 failed: ConnectError", server="http://h:1/v1")
    with pytest.raises(LMUnreachable, match="cannot reach http://h:1/v1: none of 3 attempts"):
        await policy.run(failing(refused, refused, refused))
    with pytest.raises(LMTransientError) as info:  # it answered once (a 503): reachable, just failing
        await policy.run(failing(refused, LMTransientError("HTTP 503"), refused))
    assert not isinstance(info.value, LMUnreachable)


# -- hole 2: broken metrics ----------------------------------------------------------------------------
def raises(example, prediction):
    raise KeyError("answer")


BROKEN = {
    "raises": raises,
    "returns a string": lambda e, p: "1",
    "returns NaN": lambda e, p: math.nan,
    "returns None": lambda e, p: None,
    "returns 2.0": lambda e, p: 2.0,
    "returns inf": lambda e, p: math.inf,
    "returns -0.5": lambda e, p: (-0.5, "negative"),
}


def task_with(metric, n: int = 24) -> flowbot.Task:
    rows = [{"q": f"{i}+1", "a": str(i + 1)} for i in range(n)]
    return flowbot.Task("sums", data=rows, inputs=["q"], targets=["a"], metric=metric)


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_metric_stops_the_evaluation_naming_metric_and_example(kind):
    metric = BROKEN[kind]
    with pytest.raises(MetricFailure) as info:
        flowbot.evaluate("io", task_with(metric), split="test", providers={"m": ScriptedLM(default="Answer: 2")},
                         model="m", cache=False)
    text = str(info.value)
    assert f"metric {getattr(metric, '__name__', '')}" in text and "example 'data-" in text


def test_a_metric_failing_on_a_few_examples_scores_them_zero_and_goes_on():
    scored = [ex["q"] for ex in task_with("numeric", 40).examples("test")]  # the split is fixed by the data
    assert len(scored) == 8
    failing = {scored[0], scored[5], scored[6]}  # 3 of the 8 scored, one of them first: fewer than most

    def flaky(example, prediction):
        if example["q"] in failing:
            raise ValueError("cannot parse")
        return 1.0

    res = flowbot.evaluate("io", task_with(flaky, 40), split="test", cache=False, model="m", concurrency=1,
                           providers={"m": ScriptedLM(default="Answer: 2")})
    assert res.n == 8  # the evaluation went on past the failures
    failed = {r.example["q"]: r for r in res.batch.results if r.error}
    assert set(failed) == failing
    for r in failed.values():  # each failure recorded with the metric's reason, and scored 0
        assert r.score == 0.0 and "cannot parse" in r.error and "flaky" in r.error
    assert res.score == 5 / 8


def test_scores_outside_zero_one_are_errors_for_that_example():
    values = iter([2.0] + [1.0] * 7)
    res = flowbot.evaluate("io", task_with(lambda e, p: next(values), 40), split="test", cache=False, model="m",
                           providers={"m": ScriptedLM(default="Answer: 2")})
    bad = [r for r in res.batch.results if r.error]
    assert len(bad) == 1 and bad[0].score == 0.0 and "between 0 and 1" in bad[0].error
    assert res.score == 7 / 8


def test_eval_and_optimize_with_a_broken_metric_exit_with_one_line(data, tmp_path):
    metric = tmp_path / "m.py"
    metric.write_text("def score(example, prediction):\n    return 2.0\n")
    with OpenAITestServer(reply="Answer: 1") as srv:
        ev = CliRunner().invoke(app, eval_args(data, srv, "--metric", f"{metric}:score"))
        assert ev.exit_code != 0 and "metric score failed" in one_error_line(ev)
        before = srv.request_count
        opt = CliRunner().invoke(app, ["optimize", "--data", str(data), "--input", "q", "--target", "a", "--metric",
                                       f"{metric}:score", "--model", "m", "--base-url", srv.base_url,
                                       "--val-size", "8", "--run-dir", "run", "--no-report"])
        assert srv.request_count - before <= 8  # stopped within the seed's validation
    assert opt.exit_code != 0 and "between 0 and 1" in one_error_line(opt)
    assert not (data.parent / "run").exists()  # bad input leaves no partial run directory
