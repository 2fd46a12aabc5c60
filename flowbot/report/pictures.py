"""Pictures of workflows: a layered drawing of the DAG as a PNG (matplotlib, Agg; no display needed).

Layer = longest path from the inputs, drawn top to bottom. Inputs and outputs are pills; node shape
and colour follow the kind (llm: rounded box, tool: box with side bars, branch: diamond, merge:
trapezoid); edges carry the field names; an edge from a branch to a node it gates is dashed and
labelled with the route.

    >>> png = draw_workflow(workflow)                    # doctest: +SKIP
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowbot.graph.io import workflow_from_dict
from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode, ToolNode
from flowbot.graph.sketch import Workflow

COL_W, ROW_H = 3.0, 1.45  # inches between column / row centres (1 data unit = 1 inch)
BOX_W, BOX_H = 2.45, 0.72
PILL_H = 0.42
VIRTUAL_W = 0.9  # room a long edge takes when it passes a layer
LABEL_CHARS = 28

STYLE = {  # face, edge colour
    "llm": ("#dbeafe", "#1d4ed8"),
    "tool": ("#ffedd5", "#c2410c"),
    "branch": ("#f3e8ff", "#7e22ce"),
    "merge": ("#dcfce7", "#15803d"),
    "io": ("#f1f5f9", "#475569"),
}
GATE_COLOUR = "#7e22ce"


@dataclass
class Item:
    """One thing to draw: an input pill, a node, an output pill, or a waypoint of a long edge."""

    key: str  # "in:<field>", the node id, "out:<field>", or "v:<n>" for a waypoint
    kind: str  # "input", "output", "virtual", or a node kind
    label: str
    detail: str
    layer: int = 0
    x: float = 0.0

    @property
    def width(self) -> float:
        return VIRTUAL_W if self.kind == "virtual" else COL_W


@dataclass
class Edge:
    src: str
    dst: str
    labels: list[str]
    gate: bool = False
    #: item keys from src to dst; waypoints in between when the edge spans several layers
    path: list[str] = field(default_factory=list)


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(node: Any, workflow: Workflow) -> str:
    params = workflow.params.get(node.id)
    if isinstance(node, LLMNode):
        parts = ["llm"]
        if node.output.extract != "text":
            parts.append(node.output.extract)
        if params and params.tools:
            parts.append("tools: " + ",".join(params.tools))
        if params and params.demos:
            parts.append(f"{len(params.demos)} demos")
        return " · ".join(parts)
    if isinstance(node, ToolNode):
        return f"tool: {node.tool}"
    if isinstance(node, BranchNode):
        return f"branch ({node.mode})"
    if isinstance(node, MergeNode):
        return f"merge: {node.strategy}"
    return str(getattr(node, "kind", "node"))  # pragma: no cover - the IR has four kinds


def layout(workflow: Workflow) -> tuple[dict[str, Item], list[Edge]]:
    """Items with a layer (longest path from the inputs) and an x position, and the grouped edges.

    An edge that spans several layers gets a waypoint in each layer it crosses, so it is routed
    around the boxes of those layers instead of through them (the usual layered-drawing recipe).
    """
    s = workflow.sketch
    items: dict[str, Item] = {f"in:{f}": Item(f"in:{f}", "input", f, "input") for f in s.inputs}
    edges: dict[tuple[str, str, bool], Edge] = {}

    def source(f: str) -> str:
        w = s.writer_of(f)
        return w.id if w is not None else f"in:{f}"

    def connect(src: str, dst: str, label: str, gate: bool = False) -> None:
        edge = edges.setdefault((src, dst, gate), Edge(src, dst, [], gate))
        if label not in edge.labels:
            edge.labels.append(label)

    gates = s.gates()
    for node in s.topological_order():
        for f in node.reads:
            connect(source(f), node.id, f)
        if node.id in gates:
            connect(gates[node.id][0], node.id, gates[node.id][1], gate=True)
        preds = [e.src for e in edges.values() if e.dst == node.id]
        layer = 1 + max((items[p].layer for p in preds if p in items), default=0)
        items[node.id] = Item(node.id, node.kind, node.id, _detail(node, workflow), layer)
    last = 1 + max((i.layer for i in items.values()), default=0)
    for f in s.outputs:
        items[f"out:{f}"] = Item(f"out:{f}", "output", f, "output", last)
        connect(source(f), f"out:{f}", f)
    for edge in edges.values():
        edge.path = [edge.src]
        for layer in range(items[edge.src].layer + 1, items[edge.dst].layer):
            key = f"v:{len(items)}"
            items[key] = Item(key, "virtual", "", "", layer)
            edge.path.append(key)
        edge.path.append(edge.dst)
    _place(items, list(edges.values()))
    return items, list(edges.values())


def _place(items: dict[str, Item], edges: list[Edge], sweeps: int = 3) -> None:
    """Order each layer by the mean position of its neighbours (down and up sweeps, fewer
    crossings), then pack the layer left to right, centred."""
    layers: dict[int, list[Item]] = {}
    for item in items.values():  # dict order = inputs, topological nodes, outputs, waypoints
        layers.setdefault(item.layer, []).append(item)
    preds: dict[str, list[str]] = {k: [] for k in items}
    succs: dict[str, list[str]] = {k: [] for k in items}
    for edge in edges:
        for a, b in zip(edge.path, edge.path[1:]):
            preds[b].append(a)
            succs[a].append(b)
    pos = {it.key: float(i) for row in layers.values() for i, it in enumerate(row)}

    def reorder(row: list[Item], neighbours: dict[str, list[str]]) -> None:
        def bary(item: Item) -> float:
            near = neighbours[item.key]
            return sum(pos[n] for n in near) / len(near) if near else pos[item.key]
        row.sort(key=lambda it: (bary(it), pos[it.key]))
        for i, it in enumerate(row):
            pos[it.key] = float(i)

    order = sorted(layers)
    for _ in range(sweeps):
        for layer in order[1:]:
            reorder(layers[layer], preds)
        for layer in reversed(order[:-1]):
            if layer > 0:  # the inputs keep their declared order
                reorder(layers[layer], succs)
    for row in layers.values():
        total = sum(it.width for it in row)
        x = -total / 2
        for it in row:
            it.x = x + it.width / 2
            x += it.width


def _shape(ax: Any, item: Item, x: float, y: float) -> None:
    from matplotlib.patches import FancyBboxPatch, Polygon, Rectangle

    face, edge = STYLE["io"] if item.kind in ("input", "output") else STYLE.get(item.kind, STYLE["llm"])
    w, h = BOX_W, BOX_H
    if item.kind in ("input", "output"):
        w = min(BOX_W, 0.5 + 0.085 * len(_short(item.label)))
        ax.add_patch(FancyBboxPatch((x - w / 2, y - PILL_H / 2), w, PILL_H, fc=face, ec=edge, lw=1.2,
                                    boxstyle=f"round,pad=0,rounding_size={PILL_H / 2}"))
    elif item.kind == "llm":
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, fc=face, ec=edge, lw=1.4,
                                    boxstyle="round,pad=0,rounding_size=0.14"))
    elif item.kind == "tool":
        ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, fc=face, ec=edge, lw=1.4))
        for dx in (-w / 2 + 0.1, w / 2 - 0.1):
            ax.plot([x + dx, x + dx], [y - h / 2, y + h / 2], color=edge, lw=1.0)
    elif item.kind == "branch":
        w, h = BOX_W * 1.1, BOX_H * 1.2
        ax.add_patch(Polygon([(x - w / 2, y), (x, y + h / 2), (x + w / 2, y), (x, y - h / 2)],
                             closed=True, fc=face, ec=edge, lw=1.4))
    else:  # merge: wide at the top, narrow at the bottom (it funnels several fields into one)
        ax.add_patch(Polygon([(x - w / 2, y + h / 2), (x + w / 2, y + h / 2), (x + w / 2 - 0.22, y - h / 2),
                              (x - w / 2 + 0.22, y - h / 2)], closed=True, fc=face, ec=edge, lw=1.4))
    if item.kind in ("input", "output"):
        ax.text(x, y, _short(item.label), ha="center", va="center", fontsize=8, parse_math=False)
    else:
        width = LABEL_CHARS if item.kind != "branch" else 20
        ax.text(x, y + 0.11, _short(item.label, width), ha="center", va="center", fontsize=8.5,
                fontweight="bold", parse_math=False)
        ax.text(x, y - 0.15, _short(item.detail, width), ha="center", va="center", fontsize=7,
                color="#334155", parse_math=False)


def _half_height(item: Item) -> float:
    if item.kind in ("input", "output"):
        return PILL_H / 2
    return BOX_H * (0.6 if item.kind == "branch" else 0.5)


def _edge(ax: Any, edge: Edge, items: dict[str, Item], y: Any, twin: bool) -> None:
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MPath

    a, b = items[edge.src], items[edge.dst]
    points = [(a.x, y(a) - _half_height(a))]
    for key in edge.path[1:-1]:  # pass each crossed layer vertically, at its waypoint
        v = items[key]
        points += [(v.x, y(v) + BOX_H / 2), (v.x, y(v) - BOX_H / 2)]
    points.append((b.x, y(b) + _half_height(b)))
    colour = GATE_COLOUR if edge.gate else "#475569"
    style = {"arrowstyle": "-|>", "mutation_scale": 10, "lw": 1.1, "color": colour,
             "linestyle": "--" if edge.gate else "-", "shrinkA": 1, "shrinkB": 1}
    if len(points) == 2:
        bend = 0.35 if twin else 0.0  # a gate edge beside a data edge between the same pair
        ax.add_patch(FancyArrowPatch(points[0], points[1], connectionstyle=f"arc3,rad={bend}", **style))
        (x0, y0), (x1, y1) = points
        lx, ly = (x0 + x1) / 2 + bend * (y1 - y0) * 0.5, (y0 + y1) / 2 - bend * (x1 - x0) * 0.5
    else:
        # a smooth curve through the waypoints: quadratic pieces joined at segment midpoints
        verts, codes = [points[0]], [MPath.MOVETO]
        for p, q in zip(points[1:-1], points[2:]):
            verts += [p, ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)]
            codes += [MPath.CURVE3, MPath.CURVE3]
        verts[-1] = points[-1]
        ax.add_patch(FancyArrowPatch(path=MPath(verts, codes), **style))
        first = items[edge.path[1]]  # at the first waypoint: each long edge has its own slot there
        lx, ly = first.x, y(first)
    ax.text(lx, ly, _short(", ".join(edge.labels), 30), ha="center", va="center", fontsize=7, color=colour,
            style="italic" if edge.gate else "normal", parse_math=False,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9})


def draw_workflow(workflow: Workflow | dict[str, Any], path: str | Path | None = None, *,
                  title: str | None = None, dpi: int = 100) -> bytes:
    """Draw ``workflow`` (a Workflow or its JSON dict) as a PNG; returns the bytes, and writes them
    to ``path`` when given.

        >>> from flowbot.graph import LLMNode, Sketch, Workflow
        >>> wf = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"],
        ...                             nodes=[LLMNode(id="solve", reads=["q"], writes="a")]))
        >>> draw_workflow(wf)[:4]
        b'\\x89PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(workflow, dict):
        workflow = workflow_from_dict(workflow)
    items, edges = layout(workflow)
    n_layers = 1 + max(i.layer for i in items.values())
    xs = [i.x for i in items.values()]
    width = max(xs) - min(xs) + COL_W
    height = (n_layers - 1) * ROW_H + 1.0 + (0.35 if title else 0.0)
    fig = Figure(figsize=(max(width, 3.2), height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-max(width, 3.2) / 2, max(width, 3.2) / 2)
    top = 0.5 + (0.35 if title else 0.0)
    ax.set_ylim(-(n_layers - 1) * ROW_H - 0.5, top)
    ax.axis("off")

    def y(item: Item) -> float:
        return -item.layer * ROW_H

    pairs = [(e.src, e.dst) for e in edges]
    for edge in edges:
        _edge(ax, edge, items, y, twin=edge.gate and pairs.count((edge.src, edge.dst)) > 1)
    for item in items.values():
        if item.kind != "virtual":
            _shape(ax, item, item.x, y(item))
    if title:
        ax.text(0, top - 0.2, _short(title, 80), ha="center", va="center", fontsize=10, fontweight="bold",
                parse_math=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data
