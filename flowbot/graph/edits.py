"""The closed vocabulary of structural edits, as data, and ``apply_edit``.

Each edit returns a new valid workflow that keeps the parameters of every node it did not touch
(so the inner loop warm-starts), or raises :class:`EditError` saying what is wrong. Edits are
pydantic models so an optimizer LLM can propose them as JSON that is checked before use:

    >>> from flowbot.graph import LLMNode, Sketch, Workflow
    >>> w = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"],
    ...              nodes=[LLMNode(id="answer", reads=["q"], writes="a")]))
    >>> w2 = apply_edit(w, Ensemble(node_id="answer", k=3))
    >>> sorted(w2.sketch.node_ids())
    ['answer_1', 'answer_2', 'answer_3', 'answer_merge']
"""

from __future__ import annotations

from typing import Annotated, Any, Iterable, Literal, Mapping, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from flowbot.errors import FlowBotError
from flowbot.graph.nodes import (
    BranchNode,
    BranchRule,
    LLMNode,
    MergeNode,
    Node,
    NodeParams,
    OutputFormat,
    ToolNode,
)
from flowbot.graph.sketch import Sketch, Workflow, WorkflowValidationError, tool_args


class EditError(FlowBotError):
    """An edit that cannot be applied, or whose result would be invalid."""


class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: why the optimizer proposed it (kept in the run log)
    rationale: str = ""


class AddNode(_Edit):
    """Add a node; ``consumers`` are nodes that should also read its output field."""

    op: Literal["add_node"] = "add_node"
    node: Node
    params: NodeParams | None = None
    consumers: list[str] = Field(default_factory=list)


class RemoveNode(_Edit):
    """Remove a node; its readers (and the workflow outputs) read ``replacement`` instead."""

    op: Literal["remove_node"] = "remove_node"
    node_id: str
    replacement: str | None = None


class ReplaceNode(_Edit):
    """Put another node in place of one (it writes the same field and keeps its route)."""

    op: Literal["replace_node"] = "replace_node"
    node_id: str
    node: Node
    params: NodeParams | None = None


class Rewire(_Edit):
    """Change which fields a node reads (for a tool node: ``args`` binds arguments to fields)."""

    op: Literal["rewire"] = "rewire"
    node_id: str
    reads: list[str] | None = None
    args: dict[str, str] | None = None


class InsertAfter(_Edit):
    """Insert a node after ``target``: it reads the target's output and every former reader of
    that output reads the new node's output instead. After a node that writes a workflow output, the
    new node takes over the output's name and the target writes ``<name>_draft``."""

    op: Literal["insert_after"] = "insert_after"
    target: str
    node: Node
    params: NodeParams | None = None


class InsertVerifier(_Edit):
    """Insert an llm node after ``target`` that checks and, if needed, corrects its output."""

    op: Literal["insert_verifier"] = "insert_verifier"
    target: str
    instruction: str | None = None


class AddToolStep(_Edit):
    """Give ``consumer`` the result of a tool call. The tool's arguments are bound to existing
    fields with ``args``; or an llm ``producer`` node writes the tool's input from ``producer_reads``
    (e.g. Python code from the question)."""

    op: Literal["add_tool_step"] = "add_tool_step"
    tool: str
    consumer: str
    args: dict[str, str] = Field(default_factory=dict)
    producer_reads: list[str] = Field(default_factory=list)
    producer_instruction: str = ""
    #: the tool argument the producer's output is bound to (default: the tool's primary argument)
    primary_arg: str | None = None


class Ensemble(_Edit):
    """Replace a node by ``k`` sampled copies plus a merge that writes the original field."""

    op: Literal["ensemble"] = "ensemble"
    node_id: str
    k: int = Field(default=3, ge=2, le=16)
    strategy: Literal["majority", "select", "concat", "first"] = "majority"
    temperature: float = 0.7


class AddBranch(_Edit):
    """Route between ``target`` and a new ``alternative`` node by a rule or an LLM classifier.
    Both write renamed fields; a ``first`` merge writes the target's original field."""

    op: Literal["add_branch"] = "add_branch"
    target: str
    reads: list[str]
    labels: tuple[str, str] = ("default", "alternative")
    mode: Literal["rule", "llm"] = "llm"
    rules: list[BranchRule] = Field(default_factory=list)
    classifier_instruction: str = ""
    alternative_reads: list[str] | None = None
    alternative_instruction: str = ""


Edit = Annotated[
    Union[AddNode, RemoveNode, ReplaceNode, Rewire, InsertAfter, InsertVerifier, AddToolStep, Ensemble, AddBranch],
    Field(discriminator="op"),
]
EDIT_OPS = ("add_node", "remove_node", "replace_node", "rewire", "insert_after", "insert_verifier",
            "add_tool_step", "ensemble", "add_branch")
_EDIT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Edit)


def parse_edit(data: Any) -> Any:
    """Validate a JSON-like edit proposal; raises EditError with a readable message."""
    try:
        return _EDIT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msgs.append(f"{loc or 'edit'}: {e['msg']}")
        raise EditError("invalid edit: " + "; ".join(msgs)) from None


# -- helpers -------------------------------------------------------------------------------
def fresh_name(base: str, taken: Iterable[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is not taken."""
    taken = set(taken)
    if base not in taken:
        return base
    i = 2
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def _taken_names(sketch: Sketch) -> set[str]:
    return set(sketch.node_ids()) | set(sketch.fields())


def _replace_reads(node: Any, old: str, new: str) -> Any:
    if isinstance(node, ToolNode):
        return node.model_copy(update={"args": {a: (new if f == old else f) for a, f in node.args.items()}})
    update: dict[str, Any] = {"reads": [new if f == old else f for f in node.reads]}
    if isinstance(node, BranchNode):
        update["rules"] = [r.model_copy(update={"field": new}) if r.field == old else r for r in node.rules]
    return node.model_copy(update=update)


def _redirect_field(sketch: Sketch, old: str, new: str, skip: set[str]) -> Sketch:
    """Every reader of ``old`` (except ``skip``) and the outputs read ``new`` instead."""
    nodes = [n if n.id in skip or old not in n.reads else _replace_reads(n, old, new) for n in sketch.nodes]
    outputs = [new if f == old else f for f in sketch.outputs]
    return sketch.model_copy(update={"nodes": nodes, "outputs": outputs})


def _retarget_routes(sketch: Sketch, old_id: str, new_ids: list[str]) -> Sketch:
    nodes = []
    for n in sketch.nodes:
        if isinstance(n, BranchNode) and any(old_id in t for t in n.routes.values()):
            routes = {
                label: [x for t in targets for x in (new_ids if t == old_id else [t])]
                for label, targets in n.routes.items()
            }
            n = n.model_copy(update={"routes": routes})
        nodes.append(n)
    return sketch.model_copy(update={"nodes": nodes})


def _rename_field(w: Workflow, old: str, new: str) -> Workflow:
    """Rename a node-written field everywhere: its writer, readers, tool args, rules, demos, outputs."""
    nodes = []
    for n in w.sketch.nodes:
        if old in n.reads:
            n = _replace_reads(n, old, new)
        if n.writes == old:
            n = n.model_copy(update={"writes": new})
        nodes.append(n)
    params = {}
    for node_id, p in w.params.items():
        if any(old in d.inputs for d in p.demos):
            demos = [d.model_copy(update={"inputs": {(new if k == old else k): v for k, v in d.inputs.items()}})
                     for d in p.demos]
            p = p.model_copy(update={"demos": demos})
        params[node_id] = p
    outputs = [new if f == old else f for f in w.sketch.outputs]
    sketch = w.sketch.model_copy(update={"nodes": nodes, "outputs": outputs})
    return w.model_copy(update={"sketch": sketch, "params": params})


def _keep_output_names(before: Sequence[str], w: Workflow, op: str) -> Workflow:
    """Edits never rename the workflow's outputs: they are its interface (the task's metric reads
    them by name). When an edit moved an output to a new field, the fields are renamed back; the
    node that used to write it gets a ``<name>_draft`` field instead."""
    for original, current in zip(before, list(w.sketch.outputs)):
        if original == current:
            continue
        if current in w.sketch.inputs:
            raise EditError(f"{op} would leave the workflow output {original!r} without a node writing it")
        if original in w.sketch.fields():
            w = _rename_field(w, original, fresh_name(f"{original}_draft", _taken_names(w.sketch)))
        w = _rename_field(w, current, original)
    return w


def _require(sketch: Sketch, node_id: str) -> Any:
    try:
        return sketch.node(node_id)
    except KeyError as exc:
        raise EditError(str(exc).strip("'\"")) from None


# -- the edits -----------------------------------------------------------------------------
def _add_node(w: Workflow, e: AddNode) -> Workflow:
    s = w.sketch
    if s.has_node(e.node.id):
        raise EditError(f"a node named {e.node.id!r} already exists")
    nodes = list(s.nodes) + [e.node]
    for c in e.consumers:
        _require(s, c)
    nodes = [
        n.model_copy(update={"reads": list(n.reads) + [e.node.writes]})
        if n.id in e.consumers and not isinstance(n, ToolNode) else n
        for n in nodes
    ]
    if any(isinstance(s.node(c), ToolNode) for c in e.consumers):
        raise EditError("a tool node cannot consume a field by add_node; use rewire with args")
    params = dict(w.params)
    params[e.node.id] = e.params or NodeParams()
    return w.model_copy(update={"sketch": s.model_copy(update={"nodes": nodes}), "params": params})


def _remove_node(w: Workflow, e: RemoveNode) -> Workflow:
    s = w.sketch
    node = _require(s, e.node_id)
    replacement = e.replacement
    if replacement is None:
        if len(node.reads) == 1:
            replacement = node.reads[0]
        elif s.readers_of(node.writes) or node.writes in s.outputs:
            raise EditError(
                f"node {node.id!r} reads {len(node.reads)} fields; say which field replaces "
                f"{node.writes!r} for its readers ('replacement')"
            )
    if replacement is not None and replacement not in s.fields():
        raise EditError(f"replacement field {replacement!r} does not exist")
    if replacement == node.writes:
        raise EditError("the replacement cannot be the removed node's own output")
    _check_route_kept(s, node, replacement)
    s2 = s if replacement is None else _redirect_field(s, node.writes, replacement, skip={node.id})
    s2 = _retarget_routes(s2, node.id, [])
    nodes = [n for n in s2.nodes if n.id != node.id]
    params = {k: v for k, v in w.params.items() if k != node.id}
    return w.model_copy(update={"sketch": s2.model_copy(update={"nodes": nodes}), "params": params})


def _check_route_kept(s: Sketch, node: Any, replacement: str | None) -> None:
    """A node that runs on one route of a branch has readers that see its field on that route only
    (elsewhere it is missing: a merge skips it, another reader is skipped). Its replacement must be
    missing off that route too, unless every such reader runs on that route itself; otherwise the
    removal would change what the other routes do (a 'first' merge would answer with the question)."""
    gates = s.gates()
    gate = gates.get(node.id)
    if gate is None or replacement is None:
        return
    writer = s.writer_of(replacement)
    if writer is not None and gates.get(writer.id) == gate:
        return
    outside = [r.id for r in s.readers_of(node.writes) if gates.get(r.id) != gate]
    if outside or node.writes in s.outputs:
        who = ", ".join(f"{r!r}" for r in outside) or "the workflow output"
        raise EditError(f"node {node.id!r} runs only on route {gate[1]!r} of branch {gate[0]!r}: {who} would read "
                        f"{replacement!r} on every route; remove the branch, or name a replacement written on that "
                        "route")


def _replace_node(w: Workflow, e: ReplaceNode) -> Workflow:
    s = w.sketch
    old = _require(s, e.node_id)
    new = e.node.model_copy(update={"writes": old.writes})
    if new.id != old.id and s.has_node(new.id):
        raise EditError(f"a node named {new.id!r} already exists")
    nodes = [new if n.id == old.id else n for n in s.nodes]
    s2 = _retarget_routes(s.model_copy(update={"nodes": nodes}), old.id, [new.id]) if new.id != old.id else \
        s.model_copy(update={"nodes": nodes})
    params = {k: v for k, v in w.params.items() if k != old.id}
    keep = old.kind == new.kind and e.params is None
    params[new.id] = w.params[old.id] if keep else (e.params or NodeParams())
    return w.model_copy(update={"sketch": s2, "params": params})


def _rewire(w: Workflow, e: Rewire) -> Workflow:
    s = w.sketch
    node = _require(s, e.node_id)
    if isinstance(node, ToolNode):
        if not e.args:
            raise EditError(f"rewiring tool node {node.id!r} needs 'args' (argument -> field)")
        new = node.model_copy(update={"args": dict(e.args)})
    else:
        if e.reads is None:
            raise EditError(f"rewiring node {node.id!r} needs 'reads'")
        new = node.model_copy(update={"reads": list(e.reads)})
    nodes = [new if n.id == node.id else n for n in s.nodes]
    return w.model_copy(update={"sketch": s.model_copy(update={"nodes": nodes})})


def _insert_after(w: Workflow, e: InsertAfter) -> Workflow:
    s = w.sketch
    target = _require(s, e.target)
    if s.has_node(e.node.id):
        raise EditError(f"a node named {e.node.id!r} already exists")
    if target.writes not in e.node.reads:
        raise EditError(f"the inserted node must read {target.writes!r}, the output of {target.id!r}")
    if e.node.writes in s.fields():
        raise EditError(f"the inserted node must write a new field, not {e.node.writes!r}")
    s2 = _redirect_field(s, target.writes, e.node.writes, skip=set())
    nodes = list(s2.nodes) + [e.node]
    params = dict(w.params)
    params[e.node.id] = e.params or NodeParams()
    return w.model_copy(update={"sketch": s2.model_copy(update={"nodes": nodes}), "params": params})


VERIFIER_INSTRUCTION = (
    "You are checking a draft {field}. Read the inputs and the draft carefully. If the draft is "
    "correct, repeat it unchanged. If it is wrong or incomplete, give the corrected {field}."
)


def _insert_verifier(w: Workflow, e: InsertVerifier) -> Workflow:
    s = w.sketch
    target = _require(s, e.target)
    taken = _taken_names(s)
    reads = [f for f in target.reads if f != target.writes] + [target.writes]
    output = target.output if isinstance(target, LLMNode) else OutputFormat()
    node = LLMNode(
        id=fresh_name(f"verify_{target.id}", taken),
        reads=reads,
        writes=fresh_name(f"{target.writes}_verified", taken),
        output=output,
        purpose=f"checks and corrects the output of {target.id}",
    )
    base = w.params.get(target.id, NodeParams())
    params = NodeParams(
        instruction=e.instruction or VERIFIER_INSTRUCTION.format(field=target.writes),
        model=base.model,
        max_tokens=base.max_tokens,
    )
    return _insert_after(w, InsertAfter(target=target.id, node=node, params=params))


def _add_tool_step(w: Workflow, e: AddToolStep, tools: Any = None) -> Workflow:
    s = w.sketch
    consumer = _require(s, e.consumer)
    if isinstance(consumer, ToolNode):
        raise EditError("the consumer of a tool step must read fields (an llm, branch or merge node)")
    taken = _taken_names(s)
    nodes = list(s.nodes)
    params = dict(w.params)
    args = dict(e.args)
    if e.producer_reads:
        in_field = fresh_name(f"{e.tool}_input", taken)
        producer = LLMNode(
            id=fresh_name(f"write_{e.tool}_input", taken | {in_field}),
            reads=list(e.producer_reads),
            writes=in_field,
            output=OutputFormat(extract="code" if e.tool == "python" else "text"),
            purpose=f"writes the input of the {e.tool} tool",
        )
        nodes.append(producer)
        params[producer.id] = NodeParams(instruction=e.producer_instruction or f"Write the input for the {e.tool} tool.")
        signature = tool_args(tools, e.tool)
        primary = e.primary_arg or (signature[0] if signature else "input")
        args.setdefault(primary, in_field)
        taken |= {producer.id, in_field}
    if not args:
        raise EditError("a tool step needs 'args' bound to fields or 'producer_reads' for an llm producer")
    out_field = fresh_name(f"{e.tool}_result", taken)
    tool_node = ToolNode(id=fresh_name(f"run_{e.tool}", taken | {out_field}), tool=e.tool, args=args, writes=out_field,
                         purpose=f"calls {e.tool}")
    nodes.append(tool_node)
    params[tool_node.id] = NodeParams()
    nodes = [n.model_copy(update={"reads": list(n.reads) + [out_field]}) if n.id == consumer.id else n for n in nodes]
    return w.model_copy(update={"sketch": s.model_copy(update={"nodes": nodes}), "params": params})


def _ensemble(w: Workflow, e: Ensemble) -> Workflow:
    s = w.sketch
    node = _require(s, e.node_id)
    if isinstance(node, BranchNode):
        raise EditError("a branch cannot be ensembled")
    ids, taken_fields = set(s.node_ids()) - {node.id}, set(s.fields())
    copies, fields = [], []
    for i in range(1, e.k + 1):
        f = fresh_name(f"{node.writes}_{i}", taken_fields)
        cid = fresh_name(f"{node.id}_{i}", ids)
        taken_fields.add(f)
        ids.add(cid)
        copies.append(node.model_copy(update={"id": cid, "writes": f}))
        fields.append(f)
    merge = MergeNode(id=fresh_name(f"{node.id}_merge", ids), reads=fields, writes=node.writes,
                      strategy=e.strategy, purpose=f"combines {e.k} samples of {node.id}")
    nodes: list[Any] = []
    for n in s.nodes:
        nodes += copies + [merge] if n.id == node.id else [n]
    s2 = _retarget_routes(s.model_copy(update={"nodes": nodes}), node.id, [c.id for c in copies])
    base = w.params[node.id]
    params = {k: v for k, v in w.params.items() if k != node.id}
    for i, c in enumerate(copies):
        temp = max(base.temperature, e.temperature) if i > 0 else base.temperature
        params[c.id] = base.model_copy(update={"temperature": temp, "seed": (base.seed or 0) + i}, deep=True)
    params[merge.id] = NodeParams(
        instruction="Several candidate answers follow. Pick the one most likely to be correct."
        if e.strategy == "select" else "",
        model=base.model,
    )
    return w.model_copy(update={"sketch": s2, "params": params})


def _add_branch(w: Workflow, e: AddBranch) -> Workflow:
    s = w.sketch
    target = _require(s, e.target)
    if not isinstance(target, LLMNode):
        raise EditError("add_branch needs an llm target node")
    main_label, alt_label = e.labels
    if main_label == alt_label:
        raise EditError("the two branch labels must differ")
    taken = _taken_names(s)
    f_main = fresh_name(f"{target.writes}_{main_label}", taken)
    f_alt = fresh_name(f"{target.writes}_{alt_label}", taken | {f_main})
    label_field = fresh_name(f"{target.id}_route", taken | {f_main, f_alt})
    alt_id = fresh_name(f"{target.id}_{alt_label}", taken | {f_main, f_alt, label_field})
    branch_id = fresh_name(f"route_{target.id}", taken | {f_main, f_alt, label_field, alt_id})
    merge_id = fresh_name(f"{target.id}_join", taken | {f_main, f_alt, label_field, alt_id, branch_id})
    alt = target.model_copy(update={"id": alt_id, "writes": f_alt,
                                    "reads": list(e.alternative_reads or target.reads),
                                    "purpose": f"alternative to {target.id} on route {alt_label}"})
    branch = BranchNode(id=branch_id, reads=list(e.reads), writes=label_field, mode=e.mode, rules=list(e.rules),
                        routes={main_label: [target.id], alt_label: [alt_id]}, default=main_label,
                        purpose=f"chooses between {target.id} and {alt_id}")
    join = MergeNode(id=merge_id, reads=[f_main, f_alt], writes=target.writes, strategy="first",
                     purpose="takes the output of the route that ran")
    nodes: list[Any] = []
    for n in s.nodes:
        if n.id == target.id:
            nodes += [branch, n.model_copy(update={"writes": f_main}), alt, join]
        else:
            nodes.append(n)
    params = dict(w.params)
    base = w.params[target.id]
    params[alt_id] = base.model_copy(
        update={"instruction": e.alternative_instruction or base.instruction}, deep=True)
    params[branch_id] = NodeParams(
        instruction=e.classifier_instruction
        or f"Classify the input. Answer with exactly one label: {main_label} or {alt_label}.",
        model=base.model,
    )
    params[merge_id] = NodeParams()
    return w.model_copy(update={"sketch": s.model_copy(update={"nodes": nodes}), "params": params})


_APPLY = {
    "add_node": _add_node,
    "remove_node": _remove_node,
    "replace_node": _replace_node,
    "rewire": _rewire,
    "insert_after": _insert_after,
    "insert_verifier": _insert_verifier,
    "add_tool_step": _add_tool_step,
    "ensemble": _ensemble,
    "add_branch": _add_branch,
}


def apply_edit(workflow: Workflow, edit: Any, known_tools: Iterable[str] | Mapping[str, Sequence[str]] | None = None
               ) -> Workflow:
    """Apply one edit (a model or a JSON-like dict) and return a new, validated workflow.
    ``known_tools``: tool names, or name -> argument names (primary first) to check bindings too."""
    if isinstance(edit, dict):
        edit = parse_edit(edit)
    fn = _APPLY[edit.op]
    copy = workflow.model_copy(deep=True)
    try:
        result = fn(copy, edit, known_tools) if fn is _add_tool_step else fn(copy, edit)
    except ValidationError as exc:  # a node built from the edit's values is invalid (e.g. a bad name)
        raise EditError(f"{edit.op} builds an invalid node: " +
                        "; ".join(e["msg"] for e in exc.errors())) from None
    result = _keep_output_names(workflow.sketch.outputs, result, edit.op)
    result = Workflow.model_validate(result.model_dump())  # re-validate nodes built by model_copy
    try:
        result.check(known_tools)
    except WorkflowValidationError as exc:
        raise EditError(f"{edit.op} would make the workflow invalid:\n" +
                        "\n".join(f"  - {p}" for p in exc.problems)) from None
    return result


def describe_edit(edit: Any) -> str:
    """One line for logs and reports."""
    d = edit.model_dump(exclude={"rationale"}, exclude_defaults=True)
    op = d.pop("op", edit.op)
    inner = ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict) or k == "args")
    return f"{op}({inner})"
