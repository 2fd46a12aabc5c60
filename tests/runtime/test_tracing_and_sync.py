"""The executor's tracer hook (a span per workflow run and per node) and the sync API inside a
running event loop (as in every Jupyter notebook)."""

import asyncio
import re
import threading

import pytest

import flowbot
from flowbot.graph import LLMNode, MergeNode, NodeParams, OutputFormat, Sketch, ToolNode, Workflow
from flowbot.lm import LMClient, LMRequest
from flowbot.runtime import Executor
from flowbot.runtime.sync import run_sync
from flowbot.runtime.tracing import use_tracer
from flowbot.tasks import Task, build_baseline
from flowbot.testing import ScriptedLM
from flowbot.tools import default_registry


class Recorder:
    """A tracer that keeps every span it was given (the executor calls it from many tasks)."""

    def __init__(self):
        self.spans = []

    def start_span(self, name, kind, inputs, parent=None, attributes=None):
        span = RecordedSpan(name, kind, dict(inputs), parent, dict(attributes or {}))
        self.spans.append(span)
        return span


class RecordedSpan:
    def __init__(self, name, kind, inputs, parent, attributes):
        self.name, self.kind, self.inputs, self.parent, self.attributes = name, kind, inputs, parent, attributes
        self.ended = False

    def end(self, outputs=None, attributes=None, error=None):
        self.ended, self.outputs, self.error = True, outputs, error
        self.attributes.update(attributes or {})


def tool_then_llm() -> Workflow:
    nodes = [ToolNode(id="calc", tool="calculator", args={"expression": "q"}, writes="calc_result"),
             LLMNode(id="ans", reads=["q", "calc_result"], writes="a", output=OutputFormat(extract="answer"))]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={"calc": NodeParams(), "ans": NodeParams(instruction="Copy the result.")})


def copying_lm() -> LMClient:
    def reply(req: LMRequest, i: int) -> str:
        found = re.findall(r"Calc result:\n(\S+)", req.messages[-1][1])
        return f"Answer: {found[-1] if found else '?'}"
    return LMClient(ScriptedLM(default=reply, model="m", price_per_token=(1e-6, 1e-6)))


async def test_every_node_run_is_a_span_under_its_workflow_span():
    tracer = Recorder()
    trace = await Executor(copying_lm(), tools=default_registry(), tracer=tracer).run(tool_then_llm(), {"q": "6*7"})
    assert trace.outputs == {"a": "42"}
    root = [s for s in tracer.spans if s.kind == "workflow"]
    assert len(root) == 1 and root[0].parent is None and root[0].outputs == {"a": "42"}
    nodes = {s.name: s for s in tracer.spans if s.kind != "workflow"}
    assert set(nodes) == {"calc", "ans"} and all(s.parent is root[0] and s.ended for s in nodes.values())
    assert nodes["calc"].attributes["tool"] == "calculator" and nodes["calc"].outputs == {"calc_result": "42"}
    llm = nodes["ans"]
    assert llm.inputs == {"q": "6*7", "calc_result": "42"} and llm.outputs == {"a": "42"}
    assert llm.attributes["model"] == "m" and llm.attributes["calls"] == 1
    assert llm.attributes["prompt_tokens"] == trace.nodes["ans"].usage.prompt_tokens > 0
    assert llm.attributes["cost_usd"] == pytest.approx(trace.nodes["ans"].usage.cost_usd)
    assert root[0].attributes["calls"] == 1 and root[0].error is None


async def test_the_active_tracer_reaches_executors_built_later_and_a_failing_tracer_fails_nothing():
    class Broken:
        def start_span(self, *a, **k):
            raise RuntimeError("tracing backend down")

    wf = tool_then_llm()
    tracer = Recorder()
    with use_tracer(tracer):
        executor = Executor(copying_lm(), tools=default_registry())  # built inside: no tracer argument
        await executor.run(wf, {"q": "2*3"})
    await executor.run(wf, {"q": "2*4"})  # outside the block: not traced
    assert {s.inputs.get("q") for s in tracer.spans if s.kind == "workflow"} == {"2*3"}
    with pytest.warns(RuntimeWarning, match="tracing backend down"):
        trace = await Executor(copying_lm(), tools=default_registry(), tracer=Broken()).run(wf, {"q": "5*5"})
    assert trace.outputs == {"a": "25"} and trace.error is None


async def test_a_failing_node_ends_its_span_with_the_error():
    merge = MergeNode(id="m", reads=["x"], writes="a", strategy="first")
    wf = Workflow(sketch=Sketch(inputs=["x"], outputs=["a"], nodes=[merge]), params={"m": NodeParams()})
    tracer = Recorder()
    trace = await Executor(copying_lm(), tracer=tracer).run(wf, {"x": None})
    node = next(s for s in tracer.spans if s.name == "m")
    assert trace.error and node.error == trace.nodes["m"].error == "ValueError: no input to merge"


# -- the sync API where a loop is running -------------------------------------------------------
def numbers_task() -> Task:
    rows = [{"id": f"r{i}", "q": f"{i}*3", "a": str(i * 3)} for i in range(12)]
    return Task("times3", data=rows, inputs=["q"], targets=["a"], metric="numeric")


def times3_lm() -> ScriptedLM:
    def reply(req: LMRequest, i: int) -> str:
        n = re.findall(r"(\d+)\*3", req.messages[-1][1])[-1]
        return f"Answer: {int(n) * 3}"
    return ScriptedLM(default=reply, model="m")


def test_run_sync_outside_and_inside_a_loop():
    async def where():
        return threading.current_thread().name

    assert run_sync(where()) == threading.current_thread().name

    async def inside():
        return run_sync(where())

    assert asyncio.run(inside()) == "flowbot-sync"  # a private loop in a worker thread

    async def failing():
        raise KeyError("x")

    async def inside_failing():
        run_sync(failing())

    with pytest.raises(KeyError):
        asyncio.run(inside_failing())


async def test_sync_entry_points_work_inside_a_running_loop(tmp_path):
    asyncio.get_running_loop()  # this test body runs inside an event loop, like a notebook cell
    task = numbers_task()
    ev = flowbot.evaluate("cot", task, split="test", model="m", providers={"m": times3_lm()}, cache=False)
    assert ev.score == 1.0 and ev.n == len(task.examples("test"))

    wf = flowbot.RunnableWorkflow.from_ir(build_baseline("cot", inputs=["q"], output="a")).bind(lm=LMClient(times3_lm()))
    assert wf(q="5*3") == {"a": "15"}

    opt = dict(model="m", providers={"m": times3_lm()}, train_size=4, val_size=3, inner={"steps": 0},
               outer={"rounds": 0})
    result = flowbot.optimize(task, run_dir=tmp_path / "sync", **opt)
    awaited = await flowbot.aoptimize(task, run_dir=tmp_path / "async", **opt)
    assert result.val_score == awaited.val_score == 1.0 and result.test_score == awaited.test_score == 1.0
    assert isinstance(awaited.best, flowbot.RunnableWorkflow)
