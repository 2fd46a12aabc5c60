"""``Sketch`` (structure) and ``Workflow`` (sketch + per-node parameters), with validation.

    >>> from flowbot.graph import LLMNode, Sketch, Workflow, NodeParams
    >>> s = Sketch(inputs=["question"], outputs=["answer"],
    ...            nodes=[LLMNode(id="solve", reads=["question"], writes="answer")])
    >>> w = Workflow(sketch=s, params={"solve": NodeParams(instruction="Answer briefly.")})
    >>> w.check(); [n.id for n in w.sketch.topological_order()]
    ['solve']
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from flowbot.errors import FlowBotError
from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode, Node, NodeParams, ToolNode


@dataclass(frozen=True)
class Problem:
    """One validation finding: which node and field, and what is wrong."""

    message: str
    node: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = []
        if self.node:
            where.append(f"node '{self.node}'")
        if self.field:
            where.append(f"field '{self.field}'")
        return (", ".join(where) + ": " if where else "") + self.message


class WorkflowValidationError(FlowBotError):
    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = problems
        head = f"invalid workflow{f' in {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))
        self.where = source  # (already named in the message)


class Sketch(BaseModel):
    """The structure of a workflow: its input and output fields and its nodes."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str]
    outputs: list[str]
    nodes: list[Node] = Field(default_factory=list)

    # -- lookups -------------------------------------------------------------------------
    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} (nodes: {', '.join(self.node_ids())})")

    def node_ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def has_node(self, node_id: str) -> bool:
        return any(n.id == node_id for n in self.nodes)

    def writer_of(self, field: str) -> Node | None:
        for n in self.nodes:
            if n.writes == field:
                return n
        return None

    def readers_of(self, field: str) -> list[Node]:
        return [n for n in self.nodes if field in n.reads]

    def fields(self) -> list[str]:
        out = list(self.inputs)
        out += [n.writes for n in self.nodes if n.writes not in out]
        return out

    def gates(self) -> dict[str, tuple[str, str]]:
        """node id -> (branch id, label) for nodes that run only on one branch route."""
        gated: dict[str, tuple[str, str]] = {}
        for n in self.nodes:
            if isinstance(n, BranchNode):
                for label, targets in n.routes.items():
                    for t in targets:
                        gated[t] = (n.id, label)
        return gated

    def upstream(self, node: Node) -> list[str]:
        """Ids of the nodes this node directly depends on (writers of its reads, its gate)."""
        deps: list[str] = []
        for f in node.reads:
            w = self.writer_of(f)
            if w is not None and w.id not in deps:
                deps.append(w.id)
        gate = self.gates().get(node.id)
        if gate and gate[0] not in deps:
            deps.append(gate[0])
        return deps

    def downstream(self, node_id: str) -> list[str]:
        return [n.id for n in self.nodes if node_id in self.upstream(n)]

    def topological_order(self) -> list[Node]:
        """Nodes so that every node comes after its dependencies (stable w.r.t. declaration order).
        Raises WorkflowValidationError on a cycle."""
        order: list[Node] = []
        placed: set[str] = set()
        remaining = list(self.nodes)
        deps = {n.id: set(self.upstream(n)) for n in self.nodes}
        while remaining:
            ready = [n for n in remaining if deps[n.id] <= placed]
            if not ready:
                cycle = _find_cycle({n.id: deps[n.id] for n in remaining})
                raise WorkflowValidationError(
                    [Problem("cycle: " + " -> ".join(cycle), node=cycle[0])]
                )
            for n in ready:
                order.append(n)
                placed.add(n.id)
            remaining = [n for n in remaining if n.id not in placed]
        return order

    # -- validation ----------------------------------------------------------------------
    def problems(self, known_tools: Iterable[str] | None = None) -> list[Problem]:
        return validate_sketch(self, known_tools)

    def check(self, known_tools: Iterable[str] | None = None, source: str | None = None) -> None:
        problems = self.problems(known_tools)
        if problems:
            raise WorkflowValidationError(problems, source)

    def signature(self) -> str:
        """A hash of the structure: equal for sketches that differ only in node order."""
        canon = sorted((json.dumps(n.model_dump(exclude={"purpose"}), sort_keys=True) for n in self.nodes))
        blob = json.dumps({"in": sorted(self.inputs), "out": self.outputs, "nodes": canon}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _find_cycle(deps: dict[str, set[str]]) -> list[str]:
    """A cycle among nodes that could not be ordered (all of them depend on something)."""
    start = next(iter(deps))
    path, seen = [start], {start}
    while True:
        nxt = next((d for d in sorted(deps[path[-1]]) if d in deps), None)
        if nxt is None:  # pragma: no cover - every remaining node has a remaining dependency
            return path
        if nxt in seen:
            i = path.index(nxt)
            return path[i:] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def validate_sketch(sketch: Sketch, known_tools: Iterable[str] | None = None) -> list[Problem]:
    """All structural problems of a sketch (empty when valid)."""
    problems: list[Problem] = []
    ids: set[str] = set()
    for n in sketch.nodes:
        if n.id in ids:
            problems.append(Problem("two nodes have this id", node=n.id))
        ids.add(n.id)
    if len(set(sketch.inputs)) != len(sketch.inputs):
        problems.append(Problem("an input field is listed twice"))
    if not sketch.outputs:
        problems.append(Problem("the workflow declares no output field"))

    writers: dict[str, str] = {f: "<input>" for f in sketch.inputs}
    for n in sketch.nodes:
        if n.writes in writers:
            first = writers[n.writes]
            what = "it is a workflow input" if first == "<input>" else f"node '{first}' writes it too"
            problems.append(Problem(f"two writers of one field: {what}", node=n.id, field=n.writes))
        else:
            writers[n.writes] = n.id

    for n in sketch.nodes:
        for f in n.reads:
            if f not in writers:
                problems.append(
                    Problem("reads a field that no node writes and that is not a workflow input",
                            node=n.id, field=f)
                )
        problems += _kind_problems(sketch, n, ids, known_tools)
    for f in sketch.outputs:
        if f not in writers:
            problems.append(Problem("output field is never written", field=f))

    gated: dict[str, str] = {}
    for n in sketch.nodes:
        if isinstance(n, BranchNode):
            for targets in n.routes.values():
                for t in targets:
                    if t in gated:
                        problems.append(Problem(f"gated by two branches ('{gated[t]}' and '{n.id}')", node=t))
                    gated[t] = n.id

    if len(ids) == len(sketch.nodes):  # ordering needs unique ids
        try:
            sketch.topological_order()
        except WorkflowValidationError as exc:
            problems += exc.problems
    return problems


def tool_args(known_tools: Iterable[str] | Mapping[str, Sequence[str]] | None, tool: str) -> list[str] | None:
    """The argument names of ``tool`` (primary first) when ``known_tools`` is a signature mapping."""
    if isinstance(known_tools, Mapping) and tool in known_tools:
        return list(known_tools[tool])
    return None


def _kind_problems(sketch: Sketch, n: Node, ids: set[str], known_tools: Iterable[str] | None) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(n, LLMNode):
        if n.output.extract == "label" and not n.output.labels:
            out.append(Problem("output rule 'label' needs a list of labels", node=n.id))
        if n.output.extract == "reasoning" and n.output.final == "reasoning":
            out.append(Problem("output rule 'reasoning' needs another rule as its final answer form", node=n.id))
        if n.output.extract == "reasoning" and n.output.final == "label" and not n.output.labels:
            out.append(Problem("output rule 'reasoning' with final 'label' needs a list of labels", node=n.id))
        if n.output.extract == "regex" and not n.output.pattern:
            out.append(Problem("output rule 'regex' needs a pattern", node=n.id))
    elif isinstance(n, ToolNode):
        if known_tools is not None and n.tool not in set(known_tools):
            out.append(Problem(f"unknown tool {n.tool!r} (known: {', '.join(sorted(known_tools))})", node=n.id))
        allowed = tool_args(known_tools, n.tool)
        for arg in n.args:
            if allowed is not None and arg not in allowed:
                out.append(Problem(f"tool {n.tool!r} has no argument {arg!r} (arguments: {', '.join(allowed)})",
                                   node=n.id))
        if not n.args:
            out.append(Problem("a tool node needs at least one argument bound to a field", node=n.id))
    elif isinstance(n, BranchNode):
        if not n.routes:
            out.append(Problem("a branch needs at least one route", node=n.id))
        if n.default not in n.routes:
            out.append(Problem(f"default label {n.default!r} is not one of the routes", node=n.id))
        for label, targets in n.routes.items():
            for t in targets:
                if t not in ids:
                    out.append(Problem(f"route {label!r} names unknown node {t!r}", node=n.id))
                elif t == n.id:
                    out.append(Problem(f"route {label!r} routes to the branch itself", node=n.id))
        for r in n.rules:
            if r.label not in n.routes:
                out.append(Problem(f"rule label {r.label!r} is not one of the routes", node=n.id, field=r.field))
            if r.field not in n.reads:
                out.append(Problem("a rule tests a field the branch does not read", node=n.id, field=r.field))
        if n.mode == "rule" and not n.rules and len(n.routes) > 1:
            out.append(Problem("a rule branch with several routes needs rules", node=n.id))
    elif isinstance(n, MergeNode):
        if not n.reads:
            out.append(Problem("a merge needs at least one input field", node=n.id))
    return out


class Workflow(BaseModel):
    """A sketch plus per-node parameters: everything needed to run it (given models and tools)."""

    model_config = ConfigDict(extra="forbid")

    sketch: Sketch
    params: dict[str, NodeParams] = Field(default_factory=dict)
    name: str = "workflow"
    description: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        for n in self.sketch.nodes:
            self.params.setdefault(n.id, NodeParams())

    def param(self, node_id: str) -> NodeParams:
        return self.params[node_id]

    def problems(self, known_tools: Iterable[str] | None = None) -> list[Problem]:
        problems = self.sketch.problems(known_tools)
        ids = set(self.sketch.node_ids())
        for pid in self.params:
            if pid not in ids:
                problems.append(Problem("parameters given for a node that does not exist", node=pid))
        for pid, p in self.params.items():
            for tool, bindings in (p.config.get("tool_args") or {}).items():
                for arg, f in dict(bindings).items():
                    if f not in self.sketch.inputs:
                        problems.append(Problem(f"tool_args binds {tool}.{arg} to a field that is not a "
                                                "workflow input", node=pid, field=f))
        if known_tools is not None:
            known = set(known_tools)
            for pid, p in self.params.items():
                for t in p.tools:
                    if t not in known:
                        problems.append(Problem(f"may call unknown tool {t!r}", node=pid))
        return problems

    def check(self, known_tools: Iterable[str] | None = None, source: str | None = None) -> None:
        problems = self.problems(known_tools)
        if problems:
            raise WorkflowValidationError(problems, source)

    def with_params(self, node_id: str, **changes: Any) -> "Workflow":
        """A copy with some parameters of one node changed."""
        new = self.model_copy(deep=True)
        new.params[node_id] = new.params[node_id].model_copy(update=changes)
        return new

    def llm_nodes(self) -> list[LLMNode]:
        return [n for n in self.sketch.nodes if isinstance(n, LLMNode)]

    def tunable_nodes(self) -> list[Node]:
        """Nodes with an instruction the inner loop can rewrite (llm nodes, llm branches, select merges)."""
        out: list[Node] = []
        for n in self.sketch.nodes:
            if isinstance(n, LLMNode) or (isinstance(n, BranchNode) and n.mode == "llm") or (
                isinstance(n, MergeNode) and n.strategy == "select"
            ):
                out.append(n)
        return out
