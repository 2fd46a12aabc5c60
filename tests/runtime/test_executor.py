import asyncio

import pytest

from flowbot.graph import (
    BranchNode,
    BranchRule,
    Demo,
    LLMNode,
    MergeNode,
    NodeParams,
    OutputFormat,
    Sketch,
    ToolNode,
    Workflow,
)
from flowbot.lm import Budget, BudgetExceeded, LMClient, LMRequest
from flowbot.lm.base import Completion, Provider, Usage
from flowbot.runtime import Executor, evaluate_examples
from flowbot.runtime.executor import majority_vote
from flowbot.testing import ScriptedLM
from flowbot.tools.base import Tool, ToolError, ToolRegistry, ToolResult


class EchoTool(Tool):
    name = "echo"
    description = "repeats its input in upper case"
    primary_arg = "text"

    async def call(self, **kw):
        return ToolResult(str(kw["text"]).upper())


def lm(*rules, **kw) -> LMClient:
    return LMClient(ScriptedLM(list(rules), **kw))


def single(extract="text", **params) -> Workflow:
    node = LLMNode(id="ans", reads=["q"], writes="a", output=OutputFormat(extract=extract))
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[node]), params={"ans": NodeParams(**params)})


async def test_single_node_trace_records_everything():
    w = single("answer", instruction="Be brief.", demos=[Demo(inputs={"q": "1+1"}, output="Answer: 2")])
    trace = await Executor(lm(default="thinking...\nAnswer: 4")).run(w, {"q": "2+2"})
    run = trace.nodes["ans"]
    assert trace.outputs == {"a": "4"} and trace.error is None
    assert run.inputs == {"q": "2+2"}
    assert run.raw == ["thinking...\nAnswer: 4"]
    # shared prefix first: system (instruction + format), demo turns, then the example
    roles = [m["role"] for m in run.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert run.messages[0]["content"].startswith("Be brief.") and "Answer:" in run.messages[0]["content"]
    assert "2+2" in run.messages[-1]["content"]
    assert run.usage.total_tokens > 0 and run.calls == 1 and run.latency_s >= 0


async def test_independent_nodes_run_concurrently():
    class SlowLM(Provider):
        model = "slow"
        max_concurrency = 8

        def __init__(self):
            self.in_flight = 0
            self.peak = 0

        async def complete(self, request: LMRequest) -> Completion:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            await asyncio.sleep(0.05)
            self.in_flight -= 1
            return Completion(texts=["x"], usage=Usage(1, 1))

    provider = SlowLM()
    nodes = [LLMNode(id=f"n{i}", reads=["q"], writes=f"f{i}") for i in range(4)]
    nodes.append(MergeNode(id="join", reads=[f"f{i}" for i in range(4)], writes="out", strategy="concat"))
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["out"], nodes=nodes))
    trace = await Executor(LMClient(provider)).run(w, {"q": "hi"})
    assert provider.peak == 4
    assert trace.outputs["out"] == "x\n\nx\n\nx\n\nx"


def branch_workflow(mode="rule") -> Workflow:
    nodes = [
        BranchNode(id="route", reads=["q"], writes="kind", mode=mode,
                   rules=[BranchRule(field="q", op="regex", value=r"\d", label="math")],
                   routes={"math": ["calc"], "chat": ["talk"]}, default="chat"),
        LLMNode(id="calc", reads=["q"], writes="a_math"),
        LLMNode(id="talk", reads=["q"], writes="a_chat"),
        MergeNode(id="join", reads=["a_math", "a_chat"], writes="a", strategy="first"),
    ]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={"calc": NodeParams(instruction="CALC"), "talk": NodeParams(instruction="TALK")})


async def test_branch_takes_one_route_and_merge_uses_it():
    client = lm((r"CALC", "math-answer"), (r"TALK", "chat-answer"))
    ex = Executor(client)
    t1 = await ex.run(branch_workflow(), {"q": "what is 3+4"})
    assert t1.outputs["a"] == "math-answer"
    assert t1.nodes["talk"].skipped and not t1.nodes["calc"].skipped
    t2 = await ex.run(branch_workflow(), {"q": "hello there"})
    assert t2.outputs["a"] == "chat-answer" and t2.nodes["calc"].skipped
    assert t2.error is None


async def test_llm_branch_classifies():
    client = lm((r"Classify", "Answer: math"), (r"CALC", "m"), (r"TALK", "c"))
    t = await Executor(client).run(branch_workflow("llm"), {"q": "hello"})
    assert t.outputs == {"a": "m"} and t.nodes["route"].output == "math"


async def test_failing_node_is_recorded_and_downstream_skipped():
    nodes = [
        LLMNode(id="first", reads=["q"], writes="j", output=OutputFormat(extract="json")),
        LLMNode(id="second", reads=["j"], writes="a"),
    ]
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes))
    t = await Executor(lm(default="no json here")).run(w, {"q": "x"})
    assert t.nodes["first"].error and "first" in t.error
    assert t.nodes["second"].skipped
    assert t.outputs == {"a": None}


async def test_majority_merge_and_ensemble_samples():
    nodes = [LLMNode(id=f"s{i}", reads=["q"], writes=f"v{i}", output=OutputFormat(extract="number")) for i in range(3)]
    nodes.append(MergeNode(id="vote", reads=["v0", "v1", "v2"], writes="a", strategy="majority"))
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                 params={f"s{i}": NodeParams(seed=i, temperature=0.7) for i in range(3)})
    # reply depends on the seed so the three copies disagree 2:1
    provider = ScriptedLM(default=lambda req, i: "Answer: 7" if req.seed != 1 else "Answer: 9")
    t = await Executor(LMClient(provider)).run(w, {"q": "?"})
    assert t.outputs["a"] == "7"
    assert sorted({r.seed for r in provider.calls}) == [0, 1, 2]


def test_majority_vote_normalizes():
    assert majority_vote(["1,000", "1000.0", "999"]) == "1,000"
    assert majority_vote(["Paris.", "paris", "Rome"]) == "Paris."
    assert majority_vote(["a", "b"]) == "a"


async def test_select_merge_asks_llm():
    nodes = [LLMNode(id="a1", reads=["q"], writes="c1"), LLMNode(id="a2", reads=["q"], writes="c2"),
             MergeNode(id="pick", reads=["c1", "c2"], writes="a", strategy="select")]
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                 params={"a1": NodeParams(instruction="ONE"), "a2": NodeParams(instruction="TWO")})
    client = lm((r"Candidate 1", "Answer: 2"), (r"ONE", "first"), (r"TWO", "second"))
    t = await Executor(client).run(w, {"q": "How many?"})
    assert t.outputs["a"] == "second"
    # the selector is shown what it judges against: the task's inputs, then the candidates in order
    body = t.nodes["pick"].messages[-1]["content"]
    assert body.index("How many?") < body.index("Candidate 1:\nfirst") < body.index("Candidate 2:\nsecond")


async def test_tool_node_and_react_loop():
    tools = ToolRegistry([EchoTool()])
    nodes = [ToolNode(id="shout", tool="echo", args={"text": "q"}, writes="loud"),
             LLMNode(id="ans", reads=["loud"], writes="a", output=OutputFormat(extract="answer"))]
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                 params={"ans": NodeParams(tools=["echo"])})

    def reply(req: LMRequest, i: int) -> str:
        if "Observation: PING" in req.messages[-1][1]:
            return "Answer: got PING"
        return "I will use the tool.\nAction: echo[ping]"

    client = LMClient(ScriptedLM(default=reply))
    t = await Executor(client, tools=tools).run(w, {"q": "hello"})
    assert t.nodes["shout"].output == "HELLO"
    assert t.nodes["ans"].steps == [{"tool": "echo", "input": "ping", "observation": "PING"}]
    assert t.outputs["a"] == "got PING"
    assert t.nodes["ans"].calls == 2


async def test_budget_stops_run_with_exception():
    # a budget of nothing: the run raises before the provider sees a call
    provider = ScriptedLM(default="x")
    with pytest.raises(BudgetExceeded, match="budget of 0 calls is used up"):
        await Executor(LMClient(provider, budget=Budget(max_calls=0))).run(single(), {"q": "1"})
    assert provider.calls == []
    # one call: the first of two nodes runs, the second is refused and the run raises (no partial trace)
    nodes = [LLMNode(id="first", reads=["q"], writes="x"), LLMNode(id="second", reads=["x"], writes="a")]
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                 params={"first": NodeParams(instruction="FIRST"), "second": NodeParams(instruction="SECOND")})
    provider, budget = ScriptedLM([(r"FIRST", "x1"), (r"SECOND", "a1")]), Budget(max_calls=1)
    with pytest.raises(BudgetExceeded, match="budget of 1 calls is used up"):
        await Executor(LMClient(provider, budget=budget)).run(w, {"q": "1"})
    assert [r.messages[0][1] for r in provider.calls] == ["FIRST"] and budget.spent.calls == 1
    # and in the middle of a ReAct node: it acted (one call, the tool ran), then may not answer
    tools = ToolRegistry([EchoTool()])
    provider, budget = ScriptedLM(default="Action: echo[ping]"), Budget(max_calls=1)
    with pytest.raises(BudgetExceeded):
        await Executor(LMClient(provider, budget=budget), tools=tools).run(single(tools=["echo"]), {"q": "1"})
    assert len(provider.calls) == 1 and budget.spent.calls == 1


async def test_missing_input_is_an_error_not_a_crash():
    t = await Executor(lm(default="x")).run(single(), {})
    assert "missing input" in t.error and t.nodes["ans"].skipped


async def test_batch_scores_failures_as_zero_and_keeps_going():
    provider = ScriptedLM([(r"boom", lambda r, i: (_ for _ in ()).throw(ValueError("kaput")))], default="Answer: 5")
    examples = [{"id": "a", "q": "ok", "gold": "5"}, {"id": "b", "q": "boom", "gold": "5"},
                {"id": "c", "q": "ok2", "gold": "6"}]

    def metric(example, prediction):
        return prediction["a"] == example["gold"]

    res = await evaluate_examples(Executor(LMClient(provider)), single("answer"), examples, metric, concurrency=2)
    assert [r.score for r in res.results] == [1.0, 0.0, 0.0]
    assert res.results[1].error and "kaput" in res.results[1].error
    assert res.complete and res.score == pytest.approx(1 / 3)


async def test_batch_stops_cleanly_on_budget_and_keeps_done_work():
    client = LMClient(ScriptedLM(default="Answer: 1"), budget=Budget(max_calls=3))
    examples = [{"q": str(i)} for i in range(10)]
    res = await evaluate_examples(Executor(client), single("answer"), examples, lambda e, p: 1.0, concurrency=1)
    assert len(res.results) == 3 and res.stopped and "3 calls" in res.stopped
    assert not res.complete


async def test_metric_that_raises_or_returns_garbage_on_some_examples_scores_them_zero():
    examples = [{"q": str(i)} for i in range(1, 7)]

    def bad(example, prediction):
        if example["q"] == "1":
            raise RuntimeError("metric bug")
        if example["q"] == "2":
            return "not a number"
        return 1.0

    res = await evaluate_examples(Executor(lm(default="x")), single(), examples, bad)
    assert [r.score for r in res.results] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert "metric bug" in res.results[0].error and "expected a number" in res.results[1].error


async def test_reasoning_rule_keeps_the_whole_reply_and_asks_for_the_final_line_of_its_rule():
    """A 'reasoning' copy of a step (writing another field) sends the step's prompt byte for byte."""
    from flowbot.runtime import prompts

    original = LLMNode(id="solve", reads=["q"], writes="answer", output=OutputFormat(extract="answer"))
    draft = LLMNode(id="solve", reads=["q"], writes="draft_solution",
                    output=OutputFormat(extract="reasoning", final="answer", prompt_field="answer"))
    params = NodeParams(instruction="Think step by step.")
    assert prompts.llm_messages(draft, params, {"q": "2+2?"}) == prompts.llm_messages(original, params, {"q": "2+2?"})
    assert "'Answer: <answer>'" in prompts.output_hint(original)
    number = draft.model_copy(update={"output": OutputFormat(extract="reasoning", final="number")})
    assert prompts.output_hint(number) == prompts.output_hint(
        LLMNode(id="x", reads=["q"], writes="y", output=OutputFormat(extract="number")))
    labels = draft.model_copy(update={"output": OutputFormat(extract="reasoning", final="label", labels=["A", "B"])})
    assert "one of: A, B" in prompts.output_hint(labels)
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["draft_solution"], nodes=[draft]), params={"solve": params})
    trace = await Executor(lm(default="  2 + 2 = 4\nAnswer: 4\n")).run(w, {"q": "2+2?"})
    assert trace.outputs == {"draft_solution": "2 + 2 = 4\nAnswer: 4"}


# -- failures the executor records instead of raising -----------------------------------------------
class BrokenTool(Tool):
    name = "broken"
    description = "always fails"
    primary_arg = "text"

    async def call(self, **kw):
        raise ToolError("the service is down")


class ReportingTool(Tool):
    name = "reporting"
    description = "reports a failure in its output, as the python tool does"
    primary_arg = "text"

    async def call(self, **kw):
        return ToolResult("Error: division by zero", ok=False, details={"exit_code": 1})


async def test_a_failing_tool_node_is_recorded_and_only_what_needs_it_is_skipped():
    tools = ToolRegistry([BrokenTool(), ReportingTool(), EchoTool()])
    nodes = [ToolNode(id="lookup", tool="broken", args={"text": "q"}, writes="facts"),
             LLMNode(id="use", reads=["q", "facts"], writes="a_facts"),
             ToolNode(id="shout", tool="echo", args={"text": "q"}, writes="a_loud"),
             MergeNode(id="join", reads=["a_facts", "a_loud"], writes="a", strategy="first")]
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes))
    provider = ScriptedLM(default="never asked")
    t = await Executor(LMClient(provider), tools=tools).run(w, {"q": "hi"})
    assert t.nodes["lookup"].error == "ToolError: the service is down" and not t.nodes["lookup"].skipped
    assert t.nodes["use"].skipped and "facts missing" in t.nodes["use"].error and not provider.calls
    assert t.outputs == {"a": "HI"}  # the merge goes on with what is there
    assert t.error == "node 'lookup' failed: ToolError: the service is down"
    # a tool that reports a failure in its output has an output: the workflow decides what to do with it
    reporting = Workflow(sketch=Sketch(inputs=["q"], outputs=["r"], nodes=[
        ToolNode(id="run", tool="reporting", args={"text": "q"}, writes="r")]))
    t = await Executor(LMClient(provider), tools=tools).run(reporting, {"q": "1/0"})
    assert t.outputs == {"r": "Error: division by zero"} and t.error is None
    assert t.nodes["run"].steps == [{"tool": "reporting", "ok": False, "details": {"exit_code": 1}}]
    # a tool the registry does not know fails its node the same way
    unknown = Workflow(sketch=Sketch(inputs=["q"], outputs=["r"], nodes=[
        ToolNode(id="run", tool="teleport", args={"text": "q"}, writes="r")]))
    t = await Executor(LMClient(provider), tools=tools).run(unknown, {"q": "x"})
    assert t.nodes["run"].error.startswith("ToolError: unknown tool 'teleport' (known: broken, echo, reporting)")


async def test_react_that_runs_out_of_steps_answers_with_its_last_reply():
    tools = ToolRegistry([EchoTool()])
    w = single("answer", tools=["echo"], max_tool_steps=2)

    def reply(req: LMRequest, i: int) -> str:  # acts until it may not, then answers from what it saw
        if req.stop:
            return f"Step {len(req.messages)}.\nAction: echo[ping]"
        return "Enough.\nAnswer: " + req.messages[-1][1].removeprefix("Observation: ")

    provider = ScriptedLM(default=reply)
    t = await Executor(LMClient(provider), tools=tools).run(w, {"q": "x"})
    assert [tuple(r.stop or ()) for r in provider.calls] == [("Observation:",), ("Observation:",), ()]
    # the observation before the last call asks for the answer (a model that keeps acting answers)
    assert provider.calls[1].messages[-1][1] == "Observation: PING"
    assert provider.calls[2].messages[-1][1] == ("Observation: PING\n\nNo more tool calls: give your final "
                                                 "answer now, as instructed.")
    assert t.nodes["ans"].steps == [{"tool": "echo", "input": "ping", "observation": "PING"}] * 2
    assert t.nodes["ans"].calls == 3 and t.outputs == {"a": "PING"} and t.error is None
    # still acting on its last call: that reply is the answer, unrun (its extraction finds no answer line)
    t = await Executor(LMClient(ScriptedLM(default="Action: echo[ping]")), tools=tools).run(w, {"q": "x"})
    assert t.nodes["ans"].calls == 3 and len(t.nodes["ans"].steps) == 2 and t.outputs == {"a": "Action: echo[ping]"}


async def test_react_calling_an_unknown_or_failing_tool_observes_the_error_and_goes_on():
    tools = ToolRegistry([EchoTool(), BrokenTool()])
    w = single("answer", tools=["echo", "broken"], max_tool_steps=4)
    script = iter(["Action: teleport[there]", "Action: calculator[1+1]", "Action: broken[x]", "Action: echo[ok]",
                   "Answer: done"])
    provider = ScriptedLM(default=lambda req, i: next(script))
    t = await Executor(LMClient(provider), tools=tools).run(w, {"q": "x"})
    assert [s["observation"] for s in t.nodes["ans"].steps] == [
        "error: this step cannot call 'teleport'; it may call echo, broken",
        "error: this step cannot call 'calculator'; it may call echo, broken",
        "error: the service is down", "OK"]
    assert provider.calls[1].messages[-1][1] == ("Observation: error: this step cannot call 'teleport'; it may "
                                                 "call echo, broken")
    assert t.outputs == {"a": "done"} and t.error is None and t.nodes["ans"].calls == 5


async def test_an_unknown_branch_label_takes_the_default_route():
    client = lm((r"Classify", "Answer: poetry"), (r"CALC", "m"), (r"TALK", "c"))
    t = await Executor(client).run(branch_workflow("llm"), {"q": "3+4"})
    assert t.nodes["route"].output == "chat" and t.nodes["route"].raw == ["Answer: poetry"]
    assert t.outputs == {"a": "c"} and t.nodes["calc"].skipped and t.error is None
    # a rule branch whose rules all miss takes it too
    t = await Executor(lm((r"CALC", "m"), (r"TALK", "c"))).run(branch_workflow("rule"), {"q": "no digits"})
    assert t.nodes["route"].output == "chat" and t.outputs == {"a": "c"}


# -- tool calls written another way than Action: <tool>[<input>] (what small models do) --------------
async def _react_run(script: list[str]) -> tuple:
    tools = ToolRegistry([EchoTool()])
    w = single("answer", tools=["echo"], max_tool_steps=3)
    replies = iter(script)
    provider = ScriptedLM(default=lambda req, i: next(replies))
    return await Executor(LMClient(provider), tools=tools).run(w, {"q": "x"}), provider


async def test_react_call_without_an_input_is_answered_with_the_form_and_the_loop_goes_on():
    # the 1.5B on DROP wrote "Action: python" and stopped at the Observation it began to invent;
    # read as no call, that reply was the answer on all 150 items
    t, provider = await _react_run(["Action: echo\n", "Action: echo[ping]", "Answer: PING"])
    assert [s["observation"] for s in t.nodes["ans"].steps] == [
        "error: the call gave no input; write it on one line as Action: echo[<input>]", "PING"]
    assert list(provider.calls[1].messages[-2:]) == [
        ("assistant", "Action: echo"),
        ("user", "Observation: error: the call gave no input; write it on one line as Action: echo[<input>]")]
    assert t.outputs == {"a": "PING"} and t.nodes["ans"].calls == 3


async def test_react_call_with_its_input_in_a_fenced_block_or_an_input_line_runs_the_tool():
    t, provider = await _react_run(["Action: echo\n```text\nping\n```\n", "Action: echo\nAction Input: pong\n",
                                    "Answer: done"])
    assert [(s["input"], s["observation"]) for s in t.nodes["ans"].steps] == [("ping", "PING"), ("pong", "PONG")]
    assert provider.calls[1].messages[-2][1] == "Action: echo\n```text\nping\n```"
    assert t.outputs == {"a": "done"}


async def test_a_bare_action_line_followed_by_an_answer_is_an_answer():
    t, provider = await _react_run(["Action: echo\nNo tool needed after all.\nAnswer: 7"])
    assert t.outputs == {"a": "7"} and t.nodes["ans"].steps == [] and len(provider.calls) == 1
