"""The backward pass through branches, merges and tool nodes, by the rules flowbot/optim/backward.py
states: a branch passes feedback only along the route taken; vote, concat and first merges hand
theirs to every input that was present; an LLM-select merge is treated like an llm node; a tool
node has no instruction to change but passes feedback on to the steps that wrote its arguments;
blame is conserved by tunable nodes. The traces come from real runs of the executor."""

from __future__ import annotations

import pytest

from flowbot.graph import (BranchNode, BranchRule, LLMNode, MergeNode, NodeParams, OutputFormat, Sketch, ToolNode,
                           Workflow)
from flowbot.lm import LMClient, LMRequest
from flowbot.optim import backward as bw
from flowbot.optim.prompts import FALLBACK_GRADIENT, GRADIENT_LINE, GRADIENT_LINE_SOURCE, UPSTREAM_LINE
from flowbot.runtime import Executor
from flowbot.testing import ScriptedLM, prompt_fields, scripted_optimizer
from flowbot.tools.base import Tool, ToolRegistry, ToolResult

CTX = bw.GradContext(task_description="answer", output_field="a", target_fields=["gold"])
LOSS = "The answer is wrong."


class Upper(Tool):
    name = "upper"
    description = "upper-cases its input"
    primary_arg = "text"

    async def call(self, **kw):
        return ToolResult(str(kw["text"]).upper())


def optimizer(replies: dict[str, str]):
    """Answers each backward call with ``replies[node id]`` (NONE for any other node) and records
    which steps were asked, with what."""
    asked: list[dict[str, str]] = []

    def backward(req: LMRequest, i: int) -> str:
        fields = prompt_fields("backward", req)
        asked.append(fields)
        return replies.get(fields["node_id"], "GRADIENT: NONE")

    return LMClient(scripted_optimizer(backward=backward)), asked


async def run(workflow: Workflow, inputs: dict, *rules, tools=None):
    return await Executor(LMClient(ScriptedLM(list(rules))), tools=tools).run(workflow, inputs)


def routed(mode: str) -> Workflow:
    nodes = [
        BranchNode(id="route", reads=["q"], writes="kind", mode=mode,
                   rules=[BranchRule(field="q", op="regex", value=r"\d", label="math")] if mode == "rule" else [],
                   routes={"math": ["calc"], "chat": ["talk"]}, default="chat"),
        LLMNode(id="calc", reads=["q"], writes="a_math"),
        LLMNode(id="talk", reads=["q"], writes="a_chat"),
        MergeNode(id="join", reads=["a_math", "a_chat"], writes="a", strategy="first"),
    ]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={"calc": NodeParams(instruction="CALC"), "talk": NodeParams(instruction="TALK"),
                            "route": NodeParams(instruction="Route it.")})


async def test_an_llm_branch_passes_feedback_along_the_route_taken_and_is_tuned_by_it():
    trace = await run(routed("llm"), {"q": "3+4"}, (r"Route it", "Answer: math"), (r"CALC", "8"), (r"TALK", "hi"))
    assert trace.nodes["talk"].skipped and trace.outputs == {"a": "8"}
    opt, asked = optimizer({"calc": "GRADIENT: add carefully.\nFEEDBACK[kind]: NONE",
                            "route": "GRADIENT: arithmetic is math."})
    out = await bw.backward(opt, routed("llm"), trace, LOSS, CTX)
    # the join (a first merge, no call) hands the loss to the one input present; the skipped route gets nothing
    assert out.feedback == {"join": [LOSS], "calc": [LOSS]} and "talk" not in out.feedback
    assert [a["node_id"] for a in asked] == ["calc"] and out.calls == 1
    # calc is shown which route brought it there, and may pass feedback to the branch
    assert "route 'math' chosen by step 'route'" in asked[0]["inputs"]
    assert UPSTREAM_LINE.format(field="kind") in asked[0]["upstream_lines"]
    assert out.gradients == {"calc": "add carefully."}

    opt, asked = optimizer({"calc": "GRADIENT: NONE\nFEEDBACK[kind]: this was not math.",
                            "route": "GRADIENT: arithmetic is math."})
    out = await bw.backward(opt, routed("llm"), trace, LOSS, CTX)
    assert [a["node_id"] for a in asked] == ["calc", "route"]
    assert out.feedback["route"] == ["this was not math."]
    # the branch reads only the workflow's inputs: it is not offered NONE, and it keeps the blame
    assert asked[1]["gradient_line"] == GRADIENT_LINE_SOURCE and asked[0]["gradient_line"] == GRADIENT_LINE
    assert out.gradients == {"route": "arithmetic is math."}  # calc passed the blame on, so has none


async def test_a_rule_branch_takes_feedback_but_has_nothing_to_tune():
    trace = await run(routed("rule"), {"q": "hello"}, (r"CALC", "8"), (r"TALK", "hi"))
    assert trace.nodes["calc"].skipped and trace.outputs == {"a": "hi"}
    opt, asked = optimizer({"talk": "GRADIENT: NONE\nFEEDBACK[kind]: it was a sum."})
    out = await bw.backward(opt, routed("rule"), trace, LOSS, CTX)
    assert [a["node_id"] for a in asked] == ["talk"]  # the rule branch reads only inputs: no call
    assert out.feedback["route"] == ["it was a sum."] and "calc" not in out.feedback
    assert out.gradients == {} and out.kept == []


def voting(strategy: str) -> Workflow:
    nodes = [LLMNode(id=f"s{i}", reads=["q"], writes=f"v{i}", output=OutputFormat(extract="json" if i == 2 else "text"))
             for i in range(3)]
    nodes.append(MergeNode(id="vote", reads=["v0", "v1", "v2"], writes="a", strategy=strategy))
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={**{f"s{i}": NodeParams(instruction=f"SAMPLE{i}") for i in range(3)},
                            "vote": NodeParams(instruction="Pick the best.")})


@pytest.mark.parametrize("strategy", ["majority", "concat", "first"])
async def test_a_vote_concat_or_first_merge_hands_its_feedback_to_every_input_that_was_present(strategy):
    # the third sample fails (its reply is not JSON), so the merge combines the other two
    trace = await run(voting(strategy), {"q": "?"}, (r"SAMPLE2", "not json"), (r"SAMPLE\d", "7"))
    assert trace.nodes["s2"].error and not trace.nodes["s2"].skipped and trace.nodes["vote"].inputs == {
        "v0": "7", "v1": "7"}
    opt, asked = optimizer({})  # every sample answers NONE
    out = await bw.backward(opt, voting(strategy), trace, LOSS, CTX)
    assert out.feedback == {"vote": [LOSS], "s0": [LOSS], "s1": [LOSS]}
    assert sorted(a["node_id"] for a in asked) == ["s0", "s1"]  # the merge itself makes no call
    # each sample read only inputs and answered NONE: each keeps the loss (blame is conserved)
    kept = FALLBACK_GRADIENT.format(feedback=LOSS)
    assert out.gradients == {"s0": kept, "s1": kept} and sorted(out.kept) == ["s0", "s1"]


async def test_a_select_merge_is_treated_like_an_llm_node():
    trace = await run(voting("select"), {"q": "?"}, (r"Pick the best", "Answer: 2"), (r"SAMPLE2", "not json"),
                      (r"SAMPLE0", "6"), (r"SAMPLE\d", "7"))
    assert trace.outputs == {"a": "7"} and trace.nodes["vote"].calls == 1
    opt, asked = optimizer({"vote": "GRADIENT: prefer the majority.\nFEEDBACK[v0]: 6 is wrong.\nFEEDBACK[v1]: NONE"})
    out = await bw.backward(opt, voting("select"), trace, LOSS, CTX)
    first = asked[0]
    assert first["node_id"] == "vote" and first["node_kind"] == "merge" and first["instruction"] == "Pick the best."
    # it may pass feedback to the candidates it was shown, not to the sample that failed
    assert first["upstream_lines"] == "\n".join(UPSTREAM_LINE.format(field=f) for f in ("v0", "v1"))
    assert out.gradients["vote"] == "prefer the majority."
    assert out.feedback["s0"] == ["6 is wrong."] and "s1" not in out.feedback and "s2" not in out.feedback


def tooled() -> Workflow:
    nodes = [LLMNode(id="write", reads=["q"], writes="text"),
             ToolNode(id="shout", tool="upper", args={"text": "text"}, writes="loud"),
             ToolNode(id="echo", tool="upper", args={"text": "q"}, writes="q_loud"),
             MergeNode(id="join", reads=["loud", "q_loud"], writes="a", strategy="concat")]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={"write": NodeParams(instruction="WRITE")})


async def test_a_tool_node_passes_feedback_to_the_step_that_wrote_its_argument_and_keeps_none():
    trace = await run(tooled(), {"q": "hi"}, (r"WRITE", "hello"), tools=ToolRegistry([Upper()]))
    assert trace.outputs == {"a": "HELLO\n\nHI"}
    opt, asked = optimizer({"shout": "GRADIENT: use another tool.\nFEEDBACK[text]: the text should be a greeting.",
                            "write": "GRADIENT: write a greeting."})
    out = await bw.backward(opt, tooled(), trace, LOSS, CTX)
    # the tool reading only the workflow's input has nobody to pass feedback to: no call
    assert [a["node_id"] for a in asked] == ["shout", "write"]
    assert asked[0]["instruction"] == "(tool 'upper', no instruction)" and asked[0]["node_kind"] == "tool"
    assert out.feedback["echo"] == [LOSS] and out.feedback["write"] == ["the text should be a greeting."]
    assert out.gradients == {"write": "write a greeting."}  # never the tool's own
