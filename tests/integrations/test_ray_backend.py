"""The Ray backend on a real local Ray cluster (started by the test with 2 CPUs), against the
asyncio backend on the same cached run: same results, same spend, one cache, one budget."""

import asyncio
import json
import re
import shutil
import sys

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'flowbot[ray]')")
import cloudpickle  # noqa: E402  (ships with ray)

import flowbot  # noqa: E402
from flowbot.lm import LMRequest  # noqa: E402
from flowbot.lm.base import Completion, Provider, Usage  # noqa: E402
from flowbot.runtime.ray_backend import BackendError, RayBackend  # noqa: E402
from flowbot.tasks import Task  # noqa: E402
from flowbot.optim.operators import PROGRAM_INSTRUCTION  # noqa: E402
from flowbot.testing import ScriptedLM, instructed, scripted_optimizer  # noqa: E402

PRICE = (1e-6, 4e-6)


@pytest.fixture(scope="module")
def cluster():
    # the scripted models below live in this test module, which the workers cannot import: ship it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for attempt in (1, 2):  # Ray gives its raylet a fixed 30 s to start, which a loaded machine can miss
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
    backend = RayBackend()
    yield backend
    backend.shutdown()
    ray.shutdown()


def products(n: int, start: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"{1000 + 37 * i}*{300 + 11 * i}", "answer": str((1000 + 37 * i) * (300 + 11 * i))}
            for i in range(start, start + n)]


def task() -> Task:
    return Task("mult", train=products(6, 0), val=products(4, 100), test=products(10, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers", tools=["python"])


def task_lm() -> ScriptedLM:
    """Wrong in its head; asked for a program, writes a correct one for even first factors only."""
    def reply(req: LMRequest, i: int) -> str:
        q = re.findall(r"(\d+)\*(\d+)", req.messages[-1][1])[-1]
        if instructed(PROGRAM_INSTRUCTION)(req):
            return f"```python\nprint({q[0]}*{q[1]} if {int(q[0]) % 2 == 0} else 42)\n```"
        return "Answer: 42"
    return ScriptedLM(default=reply, model="task", price_per_token=PRICE)


def optimizer_lm() -> ScriptedLM:
    return scripted_optimizer(
        edit='{"critique": "compute it in code", "edit": {"op": "program_of_thought", "target": "solve"}}',
        loss="The product is wrong.", backward="GRADIENT: compute the product exactly.", aggregate="- compute exactly",
        rewrite="<instruction>Multiply exactly.</instruction>", price_per_token=PRICE)


def optimize(path, **kw):
    return flowbot.optimize(task(), model="task", optimizer_model="optimizer", run_dir=path, test_size=4,
                            providers={"task": task_lm(), "optimizer": optimizer_lm()}, train_size=6, val_size=4,
                            inner={"steps": 1, "demos": 0}, outer={"rounds": 1, "patience": 1},
                            racing={"margin": 1, "alpha": 0.5}, **kw)


def evaluate(workflow, cache, backend=None, **kw):
    return flowbot.evaluate(workflow, task(), split="test", model="task", providers={"task": task_lm()},
                            cache=cache, backend=backend, concurrency=4, **kw)


def per_example(ev) -> list[tuple]:
    return [(r["id"], r["prediction"], r["score"], r["error"]) for r in ev.to_dict(traces=False)["examples"]]


def test_same_results_and_spend_as_asyncio_on_a_cached_run(cluster, tmp_path):
    run = tmp_path / "run"
    optimize(run)
    best = run / "best.json"
    assert any(n["kind"] == "tool" for n in json.loads(best.read_text())["sketch"]["nodes"])  # tools run on workers
    for name in ("local", "ray"):  # the same cache twice: the run tested 4 of these 10 examples
        shutil.copy(run / "cache.sqlite", tmp_path / f"{name}.sqlite")
    local = evaluate(best, tmp_path / "local.sqlite")
    remote = evaluate(best, tmp_path / "ray.sqlite", backend=cluster)
    assert per_example(remote) == per_example(local)
    assert remote.score == local.score == 0.5
    assert remote.usage == local.usage
    u = remote.usage["task"]
    assert u["cached_calls"] == 4 and u["calls"] == 6 and u["cost_usd"] > 0  # 4 from the run, 6 paid
    again = evaluate(best, tmp_path / "ray.sqlite", backend=cluster)  # what the workers paid is in the file now
    assert again.usage["task"]["calls"] == 0 and per_example(again) == per_example(local)


def test_one_budget_across_workers(cluster, tmp_path):
    local = evaluate("cot", tmp_path / "a.sqlite", budget={"calls": 5})
    remote = evaluate("cot", tmp_path / "b.sqlite", backend=cluster, budget={"calls": 5})
    assert remote.usage["task"]["calls"] == local.usage["task"]["calls"] == 5
    assert remote.n == local.n == 5 and "5 calls" in remote.batch.stopped


def test_a_whole_optimization_on_ray_matches_asyncio(cluster, tmp_path):
    local = optimize(tmp_path / "local")
    remote = optimize(tmp_path / "ray", backend=cluster)
    assert (remote.best_id, remote.val_score, remote.test_score) == (local.best_id, local.val_score, local.test_score)
    assert remote.usage == local.usage
    assert [c["val_score"] for c in remote.candidates] == [c["val_score"] for c in local.candidates]


class SlowLM(Provider):
    model = "slow"
    max_concurrency = 8

    async def complete(self, request: LMRequest) -> Completion:
        await asyncio.sleep(0.3)
        return Completion(texts=["Answer: 1"] * request.n, usage=Usage(10, 2), model=self.model)


def test_a_stop_condition_here_stops_the_workers(cluster, tmp_path):
    from flowbot.lm.budget import Budget

    budget = Budget(max_calls=100)
    budget.add_stop_condition(lambda: "stop file found" if budget.spent.calls >= 2 else None)
    ev = flowbot.evaluate("cot", task(), split="test", model="slow", providers={"slow": SlowLM()},
                          cache=tmp_path / "s.sqlite", backend=cluster, concurrency=2, budget=budget)
    assert ev.batch.stopped == "stop file found"
    assert 2 <= ev.usage["task"]["calls"] < 10 and ev.n < 10  # relayed within a poll: not every example ran


def test_clear_errors_for_what_cannot_run_on_ray(cluster, tmp_path):
    from flowbot.lm.cache import ResponseCache

    with pytest.raises(BackendError, match="in-memory cache"):
        evaluate("cot", ResponseCache(), backend=cluster)
    with pytest.raises(BackendError, match="Ray Client is not supported"):
        RayBackend(address="ray://head:10001")

    class Unshippable(ScriptedLM):
        def __reduce__(self):
            raise TypeError("holds a loaded model")

    with pytest.raises(BackendError, match="cannot be shipped to Ray workers.*--base-url"):
        flowbot.evaluate("cot", task(), model="task", providers={"task": Unshippable(default="x", model="task")},
                         cache=tmp_path / "u.sqlite", backend=cluster)


def test_cli_eval_on_ray_over_http_matches_asyncio(cluster, tmp_path):
    """``flowbot eval --backend ray``: providers reach the workers by pickling (an HTTP client to a
    real local server here), and a second backend in the process shares the workers."""
    from typer.testing import CliRunner

    from flowbot.cli.main import app
    from flowbot.testing import OpenAITestServer

    rows = tmp_path / "d.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in products(10, 0)))

    def brain(body):
        a, b = map(int, re.findall(r"(\d+)\*(\d+)", body["messages"][-1]["content"])[-1])
        return f"Answer: {a * b if a % 2 == 0 else 7}"

    runner = CliRunner()
    with OpenAITestServer(reply=brain) as srv:
        args = ["eval", "--data", str(rows), "--input", "question", "--target", "answer", "--metric", "numeric",
                "--model", "served", "--base-url", srv.base_url, "--split", "train", "--no-traces"]
        local = runner.invoke(app, [*args, "--cache", str(tmp_path / "a.sqlite"), "--out", str(tmp_path / "a.json")])
        assert local.exit_code == 0, local.output
        paid_locally = srv.request_count
        remote = runner.invoke(app, [*args, "--cache", str(tmp_path / "b.sqlite"), "--out", str(tmp_path / "b.json"),
                                     "--backend", "ray"])
        assert remote.exit_code == 0, remote.output
        assert srv.request_count == 2 * paid_locally > 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["results"][0] for n in ("a", "b"))
    assert [e["prediction"] for e in a["examples"]] == [e["prediction"] for e in b["examples"]]
    assert a["score"] == b["score"] and a["usage"] == b["usage"]


def test_a_dollar_budget_across_workers_on_a_priced_server(cluster, tmp_path):
    """A served model priced with ``prices=`` (an unpriced server is refused under a dollar cap, on
    Ray as here): the workers' calls are priced, the one budget stops them all once the dollars are
    used up, and the overshoot is at most the calls in flight, as on the asyncio backend."""
    from flowbot.lm.pricing import UnknownPrice
    from flowbot.testing import OpenAITestServer

    cap, concurrency = 0.01, 4
    with OpenAITestServer(reply="Answer: 7", latency_s=0.05) as srv:
        kw = dict(split="test", model="served", base_url=srv.base_url, budget={"usd": cap}, concurrency=concurrency)
        with pytest.raises(UnknownPrice, match="model 'served'"):
            flowbot.evaluate("cot", task(), cache=tmp_path / "u.sqlite", backend=cluster, **kw)
        assert srv.request_count == 0
        priced = {"served": (100.0, 100.0)}  # dollars per million tokens
        local = flowbot.evaluate("cot", task(), cache=tmp_path / "a.sqlite", prices=priced, **kw)
        remote = flowbot.evaluate("cot", task(), cache=tmp_path / "b.sqlite", backend=cluster, prices=priced, **kw)
        assert srv.max_in_flight > 1  # the workers' calls overlapped
    for ev in (local, remote):
        u = ev.usage["task"]
        assert u["cost_usd"] == pytest.approx((u["prompt_tokens"] + u["completion_tokens"]) * 100e-6)
        per_call = u["cost_usd"] / u["calls"]
        assert cap <= u["cost_usd"] < cap + concurrency * per_call  # used up; over by the calls in flight only
        assert ev.batch.stopped and f"${cap:g}" in ev.batch.stopped and ev.n < 10
    assert local.usage["task"]["calls"] + remote.usage["task"]["calls"] == srv.request_count


def test_a_permanent_error_on_a_worker_stops_eval_with_one_line(cluster, tmp_path):
    """`flowbot eval --backend ray` with a bad key: the first 401 on any worker stops the
    evaluation (no table of zeros), exit non-zero, one line; only calls in flight were made."""
    from typer.testing import CliRunner

    from flowbot.cli.main import app
    from flowbot.testing import Fault, OpenAITestServer

    rows = tmp_path / "d.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in products(24, 0)))
    with OpenAITestServer(reply="Answer: 1", latency_s=0.05, fault_rule=lambda body: Fault.bad_key()) as srv:
        res = CliRunner().invoke(app, ["eval", "--data", str(rows), "--input", "question", "--target", "answer",
                                       "--metric", "numeric", "--model", "served", "--base-url", srv.base_url,
                                       "--split", "train", "--concurrency", "2", "--backend", "ray",
                                       "--cache", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "e.json")])
        assert srv.request_count <= 2  # the calls in flight, not one per example
    assert res.exit_code != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "authentication failed" in lines[0], res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "e.json").exists()


def test_a_permanent_error_raised_on_ray_is_the_workers_error(cluster, tmp_path):
    from flowbot.lm import LMPermanentError

    with pytest.raises(LMPermanentError, match="ScriptedLM 'task' has no reply"):
        flowbot.evaluate("cot", task(), split="test", model="task", providers={"task": ScriptedLM(model="task")},
                         cache=tmp_path / "p.sqlite", backend=cluster, concurrency=2)


def test_a_broken_metric_stops_an_evaluation_on_ray(cluster, tmp_path):
    from flowbot.errors import MetricFailure

    def two(example, prediction):
        return 2.0

    broken = Task("mult", train=products(6, 0), val=products(4, 100), test=products(10, 200), inputs=["question"],
                  targets=["answer"], metric=two)
    with pytest.raises(MetricFailure) as info:
        flowbot.evaluate("cot", broken, split="test", model="task", providers={"task": task_lm()},
                         cache=tmp_path / "m.sqlite", backend=cluster, concurrency=2)
    text = str(info.value)
    assert "metric two failed" in text and "example 'p2" in text and "between 0 and 1" in text
