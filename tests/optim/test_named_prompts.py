"""Scripted optimizers know a request by the named prompt that made it (flowbot.optim.prompts.NAMED),
not by a phrase copied from it, and fail the run on a request they were not given a reply for."""

from __future__ import annotations

import string

import pytest

from flowbot.graph import LLMNode, NodeParams, OutputFormat, Sketch, Workflow
from flowbot.lm import LMClient, LMPermanentError
from flowbot.lm.structured import complete_json
from flowbot.optim import backward as bw
from flowbot.optim import prompts as P
from flowbot.runtime.batch import ExampleResult
from flowbot.runtime.trace import NodeRun, Trace
from flowbot.testing import ScriptedLM, optimizer_prompt, repair_turn, scripted_optimizer, which_prompt


def rendered(template: str, value: str = "x") -> str:
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    return template.replace("{score:.3f}", "{score}").format(**{n: value for n in names})


def test_each_named_prompt_is_known_by_its_name_only():
    for name, (system, user) in P.NAMED.items():
        request = [("system", system), ("user", rendered(user, "some text\nover lines"))]
        assert which_prompt(request) == name
        assert [n for n in P.NAMED if optimizer_prompt(n)(request)] == [name]
    assert which_prompt([("system", P.LOSS_SYSTEM), ("user", "What is wrong with the output?")]) is None
    assert which_prompt([("user", rendered(P.LOSS_USER))]) is None  # no system text: not the loss prompt
    with pytest.raises(KeyError, match="no optimizer prompt named 'gradient'"):
        optimizer_prompt("gradient")


def one_node() -> Workflow:
    node = LLMNode(id="answer", reads=["question"], writes="answer", output=OutputFormat(extract="answer"))
    return Workflow(sketch=Sketch(inputs=["question"], outputs=["answer"], nodes=[node]),
                    params={"answer": NodeParams(instruction="Repeat the question.")})


async def test_the_loops_requests_are_answered_by_name_and_anything_unscripted_fails_loudly():
    ctx = bw.GradContext(task_description="copy the question", output_field="answer", target_fields=["gold"])
    wf = one_node()
    trace = Trace(inputs={"question": "abc"}, nodes={"answer": NodeRun(node_id="answer", kind="llm",
                                                                       inputs={"question": "abc"}, output="abc")})
    result = ExampleResult("e1", {"question": "abc", "gold": "ABC"}, {"answer": "abc"}, 0.0, "", None, trace)
    opt = scripted_optimizer(loss="Lowercase.", backward="GRADIENT: use capitals.")
    client = LMClient(opt)
    assert await bw.textual_loss(client, wf, result, ctx) == "Lowercase."
    assert (await bw.backward(client, wf, trace, "Lowercase.", ctx)).gradients == {"answer": "use capitals."}
    # a rewrite was not scripted: the request fails, naming the prompt, instead of getting a default
    with pytest.raises(LMPermanentError, match="ScriptedLM 'optimizer' has no reply for the optimizer's 'rewrite'"):
        await bw.propose_instructions(client, wf, wf.sketch.node("answer"), "use capitals", [], ctx)
    assert [which_prompt(r) for r in opt.calls] == ["loss", "backward", "rewrite"]


async def test_a_repair_turn_is_its_own_request():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    messages = [{"role": "system", "content": P.EDIT_SYSTEM}, {"role": "user", "content": rendered(P.EDIT_USER)}]
    opt = scripted_optimizer(edit="no JSON here", repair='{"n": 3}')
    reply = await complete_json(LMClient(opt), messages, schema, max_tokens=50)
    assert reply.status == "repaired" and reply.value == {"n": 3}
    assert [which_prompt(r) for r in opt.calls] == ["edit", "edit repair"]
    assert repair_turn("edit")(opt.calls[1]) and not repair_turn("aflow")(opt.calls[1])
    unrepaired = ScriptedLM([(optimizer_prompt("edit"), "no JSON here")], model="opt")
    with pytest.raises(LMPermanentError, match="'edit repair' prompt"):
        await complete_json(LMClient(unrepaired), messages, schema, max_tokens=50)
