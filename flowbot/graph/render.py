"""Text and Mermaid renderings of a workflow (Mermaid renders on GitHub and in the HTML report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode, ToolNode

if TYPE_CHECKING:
    from flowbot.graph.sketch import Workflow


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(node, params) -> str:
    if isinstance(node, LLMNode):
        extra = f" extract={node.output.extract}" if node.output.extract != "text" else ""
        tools = f" tools={','.join(params.tools)}" if params and params.tools else ""
        return f"llm{extra}{tools}"
    if isinstance(node, ToolNode):
        return f"tool {node.tool}(" + ", ".join(f"{a}={f}" for a, f in node.args.items()) + ")"
    if isinstance(node, BranchNode):
        routes = "; ".join(f"{label}→{','.join(t)}" for label, t in node.routes.items())
        return f"branch[{node.mode}] {routes} (default {node.default})"
    if isinstance(node, MergeNode):
        return f"merge[{node.strategy}]"
    return node.kind  # pragma: no cover


def to_text(workflow: "Workflow") -> str:
    s = workflow.sketch
    lines = [f"workflow {workflow.name}: {', '.join(s.inputs)} → {', '.join(s.outputs)}"]
    for node in s.topological_order():
        p = workflow.params.get(node.id)
        reads = ", ".join(node.reads)
        lines.append(f"  {node.id}: {_describe(node, p)}  ({reads}) → {node.writes}")
        if p and p.instruction:
            lines.append(f"      instruction: {_short(p.instruction)}")
        if p and p.demos:
            lines.append(f"      demos: {len(p.demos)}")
    return "\n".join(lines)


def _mermaid_label(text: str) -> str:
    return text.replace('"', "'").replace("\n", " ")


def to_mermaid(workflow: "Workflow") -> str:
    s = workflow.sketch
    out = ["flowchart TD"]
    for f in s.inputs:
        out.append(f'  in_{f}(["{_mermaid_label(f)}"])')
    for node in s.nodes:
        label = _mermaid_label(f"{node.id}<br/>{_describe(node, workflow.params.get(node.id))}")
        if isinstance(node, BranchNode):
            out.append(f'  {node.id}{{"{label}"}}')
        elif isinstance(node, MergeNode):
            out.append(f'  {node.id}[/"{label}"\\]')
        elif isinstance(node, ToolNode):
            out.append(f'  {node.id}[["{label}"]]')
        else:
            out.append(f'  {node.id}["{label}"]')
    for f in s.outputs:
        out.append(f'  out_{f}(["{_mermaid_label(f)}"])')
    for node in s.nodes:
        for f in node.reads:
            w = s.writer_of(f)
            src = w.id if w is not None else f"in_{f}"
            out.append(f"  {src} -- {f} --> {node.id}")
        gate = s.gates().get(node.id)
        if gate:
            out.append(f"  {gate[0]} -. {gate[1]} .-> {node.id}")
    for f in s.outputs:
        w = s.writer_of(f)
        out.append(f"  {w.id if w else 'in_' + f} -- {f} --> out_{f}")
    return "\n".join(out)
