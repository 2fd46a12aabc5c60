import json

import pytest

from flowbot.graph import (
    BranchNode, BranchRule, Demo, LLMNode, MergeNode, NodeParams, OutputFormat, Sketch, ToolNode, Workflow,
    WorkflowFileError, WorkflowValidationError, load_workflow, save_workflow, to_mermaid, to_text,
)
from flowbot.graph.io import workflow_from_dict, workflow_to_dict


def chain() -> Workflow:
    s = Sketch(
        inputs=["question", "context"],
        outputs=["answer"],
        nodes=[
            LLMNode(id="plan", reads=["question"], writes="plan"),
            ToolNode(id="search", tool="retrieve", args={"query": "plan", "passages": "context"}, writes="hits"),
            LLMNode(id="answer", reads=["question", "hits"], writes="answer", output=OutputFormat(extract="answer")),
        ],
    )
    return Workflow(sketch=s, params={"plan": NodeParams(instruction="Plan.", demos=[Demo(inputs={"question": "q"}, output="p")]),
                                      "answer": NodeParams(instruction="Answer.", temperature=0.3)})


def test_topological_order_follows_fields():
    w = chain()
    assert [n.id for n in w.sketch.topological_order()] == ["plan", "search", "answer"]
    assert w.sketch.upstream(w.sketch.node("answer")) == ["search"]
    assert w.sketch.downstream("plan") == ["search"]


def test_valid_workflow_passes_with_known_tools():
    w = chain()
    signatures = {"retrieve": ["query", "passages", "k"], "python": ["code"]}
    for known in ({"retrieve"}, signatures, None):
        assert w.problems(known) == [] and w.sketch.problems(known) == []
        w.check(known_tools=known)
    # the same workflow with one thing off each time is not valid: the check above could fail
    no_tool = {"python": ["code"]}
    assert [str(p) for p in w.problems(no_tool)] == ["node 'search': unknown tool 'retrieve' (known: python)"]
    misbound = w.model_copy(deep=True)
    misbound.sketch.nodes[1] = misbound.sketch.nodes[1].model_copy(update={"args": {"query": "plan", "text": "context"}})
    assert [str(p) for p in misbound.problems(signatures)] == [
        "node 'search': tool 'retrieve' has no argument 'text' (arguments: query, passages, k)"]
    acting = w.with_params("answer", tools=["calculator"])
    assert [str(p) for p in acting.problems(signatures)] == ["node 'answer': may call unknown tool 'calculator'"]
    assert acting.problems({"retrieve", "calculator"}) == []


def test_unknown_tool_is_named():
    with pytest.raises(WorkflowValidationError) as err:
        chain().check(known_tools={"python"})
    assert "node 'search'" in str(err.value) and "unknown tool 'retrieve'" in str(err.value)


def test_cycle_is_reported_with_its_nodes():
    s = Sketch(inputs=["q"], outputs=["b"], nodes=[
        LLMNode(id="x", reads=["q", "b"], writes="a"),
        LLMNode(id="y", reads=["a"], writes="b"),
    ])
    problems = [str(p) for p in s.problems()]
    assert any("cycle" in p and "x" in p and "y" in p for p in problems)


def test_two_writers_of_one_field():
    s = Sketch(inputs=["q"], outputs=["a"], nodes=[
        LLMNode(id="one", reads=["q"], writes="a"),
        LLMNode(id="two", reads=["q"], writes="a"),
    ])
    msgs = [str(p) for p in s.problems()]
    assert any("node 'two'" in m and "field 'a'" in m and "two writers" in m for m in msgs)


def test_writing_an_input_is_two_writers():
    s = Sketch(inputs=["q"], outputs=["q"], nodes=[LLMNode(id="n", reads=["q"], writes="q")])
    assert any("workflow input" in str(p) for p in s.problems())


def test_field_read_before_written():
    s = Sketch(inputs=["q"], outputs=["a"], nodes=[LLMNode(id="n", reads=["q", "hint"], writes="a")])
    (p,) = s.problems()
    assert p.node == "n" and p.field == "hint"


def test_output_never_written():
    s = Sketch(inputs=["q"], outputs=["zzz"], nodes=[LLMNode(id="n", reads=["q"], writes="a")])
    assert any(p.field == "zzz" for p in s.problems())


def test_unknown_kind_named_in_file_error(tmp_path):
    data = workflow_to_dict(chain())
    data["sketch"]["nodes"][1]["kind"] = "teleport"
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data))
    with pytest.raises(WorkflowFileError) as err:
        load_workflow(path)
    assert "unknown node kind" in str(err.value) and "teleport" in str(err.value) and str(path) in str(err.value)


def test_missing_field_error_names_node(tmp_path):
    data = workflow_to_dict(chain())
    del data["sketch"]["nodes"][2]["writes"]
    with pytest.raises(WorkflowFileError) as err:
        workflow_from_dict(data, "w.json")
    assert "node 'answer'" in str(err.value) and "writes" in str(err.value)


def test_bad_json_gives_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "sketch": {,\n}')
    with pytest.raises(WorkflowFileError) as err:
        load_workflow(path)
    assert "line 2" in str(err.value)


def test_newer_schema_is_refused(tmp_path):
    data = workflow_to_dict(chain())
    data["schema_version"] = 99
    data["flowbot_version"] = "9.0"
    with pytest.raises(WorkflowFileError) as err:
        workflow_from_dict(data, "w.json")
    assert "schema 99" in str(err.value) and "Upgrade" in str(err.value)


def test_round_trip_is_equal(tmp_path):
    w = chain()
    path = save_workflow(w, tmp_path / "w.json")
    back = load_workflow(path, known_tools={"retrieve"})
    assert back == w
    saved = json.loads(path.read_text())
    assert saved["schema_version"] == 1 and "flowbot_version" in saved


def test_branch_validation():
    s = Sketch(inputs=["q"], outputs=["out"], nodes=[
        BranchNode(id="route", reads=["q"], writes="kind", rules=[BranchRule(field="q", op="contains", value="+", label="math")],
                   routes={"math": ["calc"], "other": ["chat", "ghost"]}, default="nowhere"),
        LLMNode(id="calc", reads=["q"], writes="a1"),
        LLMNode(id="chat", reads=["q"], writes="a2"),
        MergeNode(id="join", reads=["a1", "a2"], writes="out", strategy="first"),
    ])
    msgs = " | ".join(str(p) for p in s.problems())
    assert "unknown node 'ghost'" in msgs
    assert "default label 'nowhere'" in msgs


def test_renderings_mention_every_node():
    w = chain()
    text, mermaid = to_text(w), to_mermaid(w)
    for node_id in ("plan", "search", "answer"):
        assert node_id in text and node_id in mermaid
    assert mermaid.startswith("flowchart TD")
    assert "search -- hits --> answer" in mermaid


def test_params_filled_for_every_node_and_signature_ignores_order():
    w = chain()
    assert set(w.params) == {"plan", "search", "answer"}
    reordered = Sketch(inputs=w.sketch.inputs, outputs=w.sketch.outputs, nodes=list(reversed(w.sketch.nodes)))
    assert reordered.signature() == w.sketch.signature()
    other = w.sketch.model_copy(update={"outputs": ["hits"]})
    assert other.signature() != w.sketch.signature()


def test_new_output_format_fields_are_left_out_while_unset():
    """Workflows saved before ``final`` / ``prompt_field`` existed serialize and hash exactly as before."""
    plain = OutputFormat(extract="number")
    assert plain.model_dump() == {"extract": "number", "labels": None, "pattern": None, "description": ""}
    draft = OutputFormat(extract="reasoning", final="number", prompt_field="answer")
    assert draft.model_dump()["final"] == "number" and draft.model_dump()["prompt_field"] == "answer"
    node = LLMNode(id="solve", reads=["q"], writes="draft", output=draft)
    w = Workflow(sketch=Sketch(inputs=["q"], outputs=["draft"], nodes=[node]))
    again = workflow_from_dict(json.loads(json.dumps(workflow_to_dict(w))))
    assert again.sketch.nodes[0].output == draft
    with pytest.raises(ValueError, match="prompt field"):
        OutputFormat(prompt_field="not a name")


def test_reasoning_rule_validation():
    def problems(fmt: OutputFormat) -> list[str]:
        node = LLMNode(id="solve", reads=["q"], writes="a", output=fmt)
        return [p.message for p in Sketch(inputs=["q"], outputs=["a"], nodes=[node]).problems()]

    assert problems(OutputFormat(extract="reasoning")) == []
    assert problems(OutputFormat(extract="reasoning", final="label")) == [
        "output rule 'reasoning' with final 'label' needs a list of labels"]
    assert problems(OutputFormat(extract="reasoning", final="reasoning")) == [
        "output rule 'reasoning' needs another rule as its final answer form"]
