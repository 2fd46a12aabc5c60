"""Workflow pictures: a layered drawing with all four node kinds."""

from __future__ import annotations

import struct

import pytest

from flowbot.graph import BranchNode, BranchRule, LLMNode, MergeNode, NodeParams, Sketch, ToolNode, Workflow
from flowbot.graph.io import workflow_to_dict
from flowbot.report.pictures import draw_workflow, layout

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def all_kinds() -> Workflow:
    wf = Workflow(sketch=Sketch(inputs=["question", "context"], outputs=["answer"], nodes=[
        BranchNode(id="route", reads=["question"], writes="route_label",
                   rules=[BranchRule(field="question", op="regex", value=r"\d+\*\d+", label="arith")],
                   routes={"arith": ["calc"], "other": ["solve"]}, default="other"),
        ToolNode(id="calc", tool="calculator", args={"expression": "question"}, writes="calc_result"),
        LLMNode(id="solve", reads=["question", "context"], writes="draft"),
        LLMNode(id="check", reads=["question", "draft"], writes="checked"),
        MergeNode(id="merge", reads=["calc_result", "checked"], writes="answer", strategy="first"),
    ]), params={"solve": NodeParams(instruction="Use $x$ and <b>tags</b> freely.")})
    wf.check()
    return wf


def test_layers_are_longest_paths_from_the_inputs(all_kinds):
    items, edges = layout(all_kinds)
    layer = {k: v.layer for k, v in items.items() if v.kind != "virtual"}
    assert layer == {"in:question": 0, "in:context": 0, "route": 1, "calc": 2, "solve": 2, "check": 3,
                     "merge": 4, "out:answer": 5}
    assert {items[k].kind for k in ("route", "calc", "solve", "merge")} == {"branch", "tool", "llm", "merge"}
    gates = [(e.src, e.dst, e.labels) for e in edges if e.gate]
    assert sorted(gates) == [("route", "calc", ["arith"]), ("route", "solve", ["other"])]
    by_pair = {(e.src, e.dst): e for e in edges if not e.gate}
    assert by_pair[("solve", "check")].labels == ["draft"]
    # an edge that skips layers passes each one at a waypoint, one per crossed layer
    long = by_pair[("in:question", "check")]
    assert [items[k].layer for k in long.path] == [0, 1, 2, 3]
    assert all(items[k].kind == "virtual" for k in long.path[1:-1])
    # no two items of a layer overlap
    for lay in {i.layer for i in items.values()}:
        row = sorted((i for i in items.values() if i.layer == lay), key=lambda i: i.x)
        assert all(b.x - a.x >= (a.width + b.width) / 2 - 1e-9 for a, b in zip(row, row[1:]))


def test_draw_workflow_returns_and_writes_a_png(all_kinds, tmp_path):
    path = tmp_path / "pics" / "wf.png"
    data = draw_workflow(all_kinds, path)
    assert path.read_bytes() == data
    width, height = png_size(data)
    single = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[LLMNode(id="solve", reads=["q"], writes="a")]))
    small_w, small_h = png_size(draw_workflow(single))
    assert height > small_h and width > small_w  # six layers and two columns vs three layers, one column
    assert draw_workflow(workflow_to_dict(all_kinds)).startswith(PNG_SIGNATURE)  # a workflow JSON dict works too
