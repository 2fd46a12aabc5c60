import pytest

from flowbot.graph import (
    AddBranch, AddNode, AddToolStep, BranchNode, BranchRule, Demo, EditError, Ensemble, InsertAfter, InsertVerifier,
    LLMNode, MergeNode, NodeParams, RemoveNode, ReplaceNode, Rewire, Sketch, ToolNode, Workflow, apply_edit,
)
from flowbot.graph.edits import parse_edit


def three_chain() -> Workflow:
    s = Sketch(inputs=["q"], outputs=["answer"], nodes=[
        LLMNode(id="plan", reads=["q"], writes="plan"),
        LLMNode(id="draft", reads=["q", "plan"], writes="draft"),
        LLMNode(id="final", reads=["draft"], writes="answer"),
    ])
    return Workflow(sketch=s, params={n: NodeParams(instruction=f"{n} instr") for n in ("plan", "draft", "final")})


def untouched_params_kept(before: Workflow, after: Workflow, touched: set[str]) -> None:
    for node_id, p in before.params.items():
        if node_id not in touched and node_id in after.params:
            assert after.params[node_id] == p


def test_insert_verifier_rewires_readers():
    w = three_chain()
    w2 = apply_edit(w, InsertVerifier(target="draft"))
    v = w2.sketch.node("verify_draft")
    assert v.reads == ["q", "plan", "draft"] and v.writes == "draft_verified"
    assert w2.sketch.node("final").reads == ["draft_verified"]
    assert "correct" in w2.params["verify_draft"].instruction
    untouched_params_kept(w, w2, set())
    # the original is not modified
    assert w.sketch.node("final").reads == ["draft"]


def test_insert_after_output_node_keeps_the_output_name():
    # the workflow's outputs are its interface (the metric reads them by name): the new node takes
    # over the name and the former writer produces a draft
    w = three_chain()
    node = LLMNode(id="polish", reads=["answer"], writes="answer_polished")
    w2 = apply_edit(w, InsertAfter(target="final", node=node, params=NodeParams(instruction="polish")))
    assert w2.sketch.outputs == ["answer"]
    assert w2.sketch.node("polish").reads == ["answer_draft"] and w2.sketch.node("polish").writes == "answer"
    assert w2.sketch.node("final").writes == "answer_draft"
    assert w2.params["polish"].instruction == "polish"
    untouched_params_kept(w, w2, set())


def test_verifier_after_the_output_node_keeps_the_output_name():
    w = three_chain()
    w2 = apply_edit(w, InsertVerifier(target="final"))
    v = w2.sketch.node("verify_final")
    assert w2.sketch.outputs == ["answer"] and v.writes == "answer" and "answer_draft" in v.reads
    assert w2.sketch.writer_of("answer_draft").id == "final"


def test_renamed_fields_carry_demo_inputs_along():
    s = Sketch(inputs=["q"], outputs=["answer", "aux"], nodes=[
        LLMNode(id="a", reads=["q"], writes="x"),
        LLMNode(id="b", reads=["x"], writes="answer"),
        LLMNode(id="c", reads=["x"], writes="aux"),
    ])
    demo = Demo(inputs={"x": "seen"}, output="Aux: 1")
    w = Workflow(sketch=s, params={"a": NodeParams(), "b": NodeParams(), "c": NodeParams(demos=[demo])})
    w2 = apply_edit(w, RemoveNode(node_id="b"))  # "x" becomes the output "answer"
    assert w2.sketch.outputs == ["answer", "aux"] and w2.sketch.node("a").writes == "answer"
    assert w2.sketch.node("c").reads == ["answer"]
    assert w2.params["c"].demos[0].inputs == {"answer": "seen"}


def test_an_edit_cannot_leave_an_output_without_a_writer():
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[LLMNode(id="n", reads=["q"], writes="a")]))
    with pytest.raises(EditError, match="without a node writing it"):
        apply_edit(w, RemoveNode(node_id="n"))


def test_insert_after_must_read_target():
    with pytest.raises(EditError, match="must read 'draft'"):
        apply_edit(three_chain(), InsertAfter(target="draft", node=LLMNode(id="x", reads=["q"], writes="y")))


def test_remove_node_uses_its_single_input():
    w = three_chain()
    w2 = apply_edit(w, RemoveNode(node_id="final"))
    assert w2.sketch.outputs == ["answer"] and w2.sketch.node("draft").writes == "answer"
    assert "final" not in w2.params
    untouched_params_kept(w, w2, set())


def test_remove_node_needs_replacement_when_ambiguous():
    with pytest.raises(EditError, match="replacement"):
        apply_edit(three_chain(), RemoveNode(node_id="draft"))
    w2 = apply_edit(three_chain(), RemoveNode(node_id="draft", replacement="plan"))
    assert w2.sketch.node("final").reads == ["plan"]


def test_remove_that_leaves_a_dangling_read_fails_clearly():
    with pytest.raises(EditError, match="does not exist"):
        apply_edit(three_chain(), RemoveNode(node_id="draft", replacement="nope"))


def test_replace_node_keeps_field_and_params_of_same_kind():
    w = three_chain()
    w2 = apply_edit(w, ReplaceNode(node_id="plan", node=LLMNode(id="plan", reads=["q"], writes="whatever")))
    assert w2.sketch.node("plan").writes == "plan"
    assert w2.params["plan"] == w.params["plan"]
    w3 = apply_edit(w, ReplaceNode(node_id="plan", node=ToolNode(id="plan_tool", tool="calculator", args={"expression": "q"}, writes="x")))
    assert w3.sketch.node("plan_tool").writes == "plan"
    assert "plan" not in w3.params


def test_rewire_and_cycle_rejected():
    w2 = apply_edit(three_chain(), Rewire(node_id="final", reads=["draft", "plan"]))
    assert w2.sketch.node("final").reads == ["draft", "plan"]
    with pytest.raises(EditError, match="cycle"):
        apply_edit(three_chain(), Rewire(node_id="plan", reads=["q", "draft"]))


def test_ensemble_copies_params_and_merges():
    w = three_chain()
    w2 = apply_edit(w, Ensemble(node_id="draft", k=3, strategy="majority"))
    ids = w2.sketch.node_ids()
    assert {"draft_1", "draft_2", "draft_3", "draft_merge"} <= set(ids)
    merge = w2.sketch.node("draft_merge")
    assert isinstance(merge, MergeNode) and merge.writes == "draft" and len(merge.reads) == 3
    seeds = {w2.params[f"draft_{i}"].seed for i in (1, 2, 3)}
    assert len(seeds) == 3  # distinct samples
    assert all(w2.params[f"draft_{i}"].instruction == "draft instr" for i in (1, 2, 3))
    untouched_params_kept(w, w2, {"draft"})


def test_add_tool_step_with_producer():
    w = three_chain()
    w2 = apply_edit(w, AddToolStep(tool="python", consumer="final", producer_reads=["q"]), known_tools={"python"})
    tool = next(n for n in w2.sketch.nodes if isinstance(n, ToolNode))
    assert tool.tool == "python"
    assert tool.writes in w2.sketch.node("final").reads
    producer = w2.sketch.writer_of(tool.args["input"])
    assert producer is not None and producer.output.extract == "code"


def test_add_tool_step_unknown_tool_rejected():
    with pytest.raises(EditError, match="unknown tool"):
        apply_edit(three_chain(), AddToolStep(tool="teleport", consumer="final", args={"x": "q"}), known_tools={"python"})


def test_add_branch_builds_route_and_join():
    w = three_chain()
    w2 = apply_edit(w, AddBranch(target="final", reads=["q"], labels=("easy", "hard")))
    s = w2.sketch
    branch = s.node("route_final")
    assert branch.routes == {"easy": ["final"], "hard": ["final_hard"]}
    join = s.node("final_join")
    assert join.writes == "answer" and join.strategy == "first"
    assert w2.params["final"] == w.params["final"]


def test_add_node_with_consumers():
    w2 = apply_edit(three_chain(), AddNode(node=LLMNode(id="hint", reads=["q"], writes="hint"), consumers=["final"]))
    assert w2.sketch.node("final").reads == ["draft", "hint"]


def test_parse_edit_from_json_and_errors():
    e = parse_edit({"op": "ensemble", "node_id": "draft", "k": 5})
    assert isinstance(e, Ensemble) and e.k == 5
    with pytest.raises(EditError, match="invalid edit"):
        parse_edit({"op": "teleport"})
    with pytest.raises(EditError):
        parse_edit({"op": "ensemble", "node_id": "x", "k": 1})
    # dicts are accepted by apply_edit
    w2 = apply_edit(three_chain(), {"op": "insert_verifier", "target": "plan"})
    assert w2.sketch.has_node("verify_plan")


def test_unknown_node_in_edit():
    with pytest.raises(EditError, match="no node 'ghost'"):
        apply_edit(three_chain(), Ensemble(node_id="ghost"))


def test_an_edit_that_builds_an_invalid_node_is_an_edit_error():
    # a small model wrote the tool with its signature, "calculator(expression)", which cannot name a field
    w = three_chain()
    with pytest.raises(EditError, match="invalid node"):
        apply_edit(w, AddToolStep(tool="calculator(expression)", consumer="final", producer_reads=["q"]))


# -- edits that would break validation (or the workflow's meaning) are refused, one case each ------
def routed() -> Workflow:
    """A rule branch: digits go to 'calc', anything else to 'talk'; a 'first' merge joins them."""
    nodes = [
        BranchNode(id="route", reads=["q"], writes="kind",
                   rules=[BranchRule(field="q", op="regex", value=r"\d", label="math")],
                   routes={"math": ["calc"], "chat": ["talk"]}, default="chat"),
        LLMNode(id="calc", reads=["q"], writes="a_math"),
        LLMNode(id="talk", reads=["q"], writes="a_chat"),
        MergeNode(id="join", reads=["a_math", "a_chat"], writes="a", strategy="first"),
    ]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={"calc": NodeParams(instruction="CALC"), "talk": NodeParams(instruction="TALK")})


def test_a_rule_branch_with_no_rules_is_refused():
    with pytest.raises(EditError, match="add_branch would make the workflow invalid:\n.*node 'route_final'.*"
                                        "a rule branch with several routes needs rules"):
        apply_edit(three_chain(), AddBranch(target="final", reads=["q"], mode="rule"))
    # with a rule it is a workflow (and an llm branch needs none)
    rule = BranchRule(field="q", op="contains", value="?", label="alternative")
    assert apply_edit(three_chain(), AddBranch(target="final", reads=["q"], mode="rule", rules=[rule])).problems() == []
    assert apply_edit(three_chain(), AddBranch(target="final", reads=["q"], mode="llm")).problems() == []


def test_rewiring_to_an_unknown_field_is_refused():
    with pytest.raises(EditError, match="rewire would make the workflow invalid:\n.*node 'final', field 'drafts': "
                                        "reads a field that no node writes"):
        apply_edit(three_chain(), Rewire(node_id="final", reads=["drafts"]))
    tool = apply_edit(three_chain(), AddToolStep(tool="calculator", consumer="final", args={"expression": "plan"}),
                      known_tools={"calculator": ["expression"]})
    with pytest.raises(EditError, match="node 'run_calculator', field 'nowhere': reads a field that no node writes"):
        apply_edit(tool, Rewire(node_id="run_calculator", args={"expression": "nowhere"}))
    # a rule that tests a field the branch stops reading
    with pytest.raises(EditError, match="a rule tests a field the branch does not read"):
        apply_edit(routed(), Rewire(node_id="route", reads=["a_chat"]))


def test_removing_a_node_behind_a_branch_never_lets_another_route_read_its_replacement():
    # 'calc' runs on the math route only: its reader 'join' would read the question on every route,
    # and answer with it (a 'first' merge takes the first input present)
    with pytest.raises(EditError, match="'calc' runs only on route 'math' of branch 'route'.*'join' would read 'q' "
                                        "on every route"):
        apply_edit(routed(), RemoveNode(node_id="calc"))
    with pytest.raises(EditError, match="'talk' runs only on route 'chat'.*'a_math'"):
        apply_edit(routed(), RemoveNode(node_id="talk", replacement="a_math"))
    # a step behind the branch read only on its own route can go: its reader, on that route, reads q
    nodes = list(routed().sketch.nodes)
    nodes[0] = nodes[0].model_copy(update={"routes": {"math": ["calc", "fmt"], "chat": ["talk"]}})
    nodes.insert(2, LLMNode(id="fmt", reads=["a_math"], writes="a_fmt"))
    nodes[-1] = nodes[-1].model_copy(update={"reads": ["a_fmt", "a_chat"]})
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes))
    w2 = apply_edit(w, RemoveNode(node_id="calc"))
    assert w2.sketch.node("fmt").reads == ["q"] and w2.sketch.node("route").routes["math"] == ["fmt"]
    # and the branch itself may go: both routes then run, as the edit says
    assert apply_edit(routed(), RemoveNode(node_id="route", replacement="q")).sketch.gates() == {}


async def test_ensembling_a_node_behind_a_branch_keeps_it_on_its_route():
    from flowbot.lm import LMClient
    from flowbot.runtime import Executor
    from flowbot.testing import ScriptedLM

    with pytest.raises(EditError, match="a branch cannot be ensembled"):
        apply_edit(routed(), Ensemble(node_id="route"))
    w2 = apply_edit(routed(), Ensemble(node_id="calc", k=3))
    assert w2.sketch.node("route").routes == {"math": ["calc_1", "calc_2", "calc_3"], "chat": ["talk"]}
    assert w2.sketch.gates()["calc_2"] == ("route", "math") and w2.sketch.node("calc_merge").writes == "a_math"
    provider = ScriptedLM([(r"CALC", "7"), (r"TALK", "hello")])
    executor = Executor(LMClient(provider))
    math, chat = await executor.run(w2, {"q": "3+4"}), await executor.run(w2, {"q": "hi"})
    assert math.outputs == {"a": "7"} and math.error is None and math.nodes["talk"].skipped
    assert chat.outputs == {"a": "hello"} and chat.error is None
    assert all(chat.nodes[n].skipped for n in ("calc_1", "calc_2", "calc_3", "calc_merge"))
    assert len(provider.calls) == 3 + 1  # three samples on the math route, one call on the chat route


def test_a_bad_tool_argument_is_refused():
    signatures = {"retrieve": ["query", "passages", "k"], "python": ["code"]}
    misnamed = AddToolStep(tool="retrieve", consumer="final", args={"query": "q", "passage": "plan"})
    with pytest.raises(EditError, match=r"tool 'retrieve' has no argument 'passage' \(arguments: query, passages, k\)"):
        apply_edit(three_chain(), misnamed, known_tools=signatures)
    with pytest.raises(EditError, match="tool 'python' has no argument 'source'"):
        apply_edit(three_chain(), AddToolStep(tool="python", consumer="final", producer_reads=["q"],
                                              primary_arg="source"), known_tools=signatures)
    ok = apply_edit(three_chain(), AddToolStep(tool="retrieve", consumer="final", args={"query": "q"}),
                    known_tools=signatures)
    with pytest.raises(EditError, match="tool 'retrieve' has no argument 'text'"):
        apply_edit(ok, Rewire(node_id="run_retrieve", args={"text": "q"}), known_tools=signatures)
