"""FlowBot's backward pass: textual gradients over a workflow trace (loss, backward pass,
aggregation and the prompt step).

The backward pass walks the trace in reverse topological order, like the chain rule. Each node that
received feedback is shown its instruction, the inputs it actually got, its output and that
feedback; the optimizer model answers with a *gradient* for the node's instruction (or NONE when the
node did its job) and feedback for each upstream node that produced one of its inputs. Branches pass
feedback only along the route taken (skipped nodes get none); vote/concat merges hand their
feedback to every input that was present; an LLM-select merge is treated like an llm node. Blame
is conserved: a tunable node that answers NONE and passes nothing upstream keeps the feedback it
received as its gradient (an error in the output must be some step's).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode, NodeParams, ToolNode
from flowbot.graph.sketch import Workflow
from flowbot.lm.client import LMClient
from flowbot.optim import prompts as P
from flowbot.runtime.batch import ExampleResult
from flowbot.runtime.trace import Trace
from flowbot.scoring.values import format_value

_NONE_RE = re.compile(r"^\s*(none|n/?a|no change|nothing|-)?\s*[.!]?\s*$", re.I)


@dataclass
class GradContext:
    """What the optimizer prompts need to know about the task."""

    task_description: str
    output_field: str
    target_fields: list[str]
    max_value_chars: int = 1200
    loss_max_tokens: int = 256
    backward_max_tokens: int = 384
    step_max_tokens: int = 512
    rule_max_tokens: int = 96


@dataclass
class BackwardResult:
    gradients: dict[str, str] = field(default_factory=dict)  # node id -> gradient text
    feedback: dict[str, list[str]] = field(default_factory=dict)  # node id -> feedback it received
    calls: int = 0
    kept: list[str] = field(default_factory=list)  # nodes whose gradient fell back to their feedback


def clip(text: Any, limit: int) -> str:
    s = format_value(text)
    return s if len(s) <= limit else s[: limit // 2] + "\n[...]\n" + s[-limit // 2:]


def brief_fields(values: dict[str, Any], limit: int = 160) -> str:
    """Each field clipped on its own, so a long passage cannot push the question out of view."""
    return "; ".join(f"{k}: {clip(v, limit)}" for k, v in values.items())


def is_none(text: str) -> bool:
    return bool(_NONE_RE.match(text or ""))


def workflow_summary(workflow: Workflow) -> str:
    parts = [f"{n.id}({', '.join(n.reads)} → {n.writes})" for n in workflow.sketch.topological_order()]
    return " ; ".join(parts)


def gold_text(example: dict[str, Any], ctx: GradContext) -> str:
    if len(ctx.target_fields) == 1:
        return clip(example.get(ctx.target_fields[0]), ctx.max_value_chars)
    return "\n".join(f"{f}: {clip(example.get(f), ctx.max_value_chars)}" for f in ctx.target_fields)


# -- loss ------------------------------------------------------------------------------------
async def textual_loss(opt: LMClient, workflow: Workflow, result: ExampleResult, ctx: GradContext) -> str:
    """What is wrong with the final output, in words (the metric's own feedback is included)."""
    inputs = {f: result.example.get(f) for f in workflow.sketch.inputs}
    metric_feedback = f"\nMetric feedback: {result.feedback}" if result.feedback else ""
    if result.error:
        metric_feedback += f"\nError while running the workflow: {result.error}"
    user = P.LOSS_USER.format(
        task_description=ctx.task_description,
        inputs="\n".join(f"{k}: {clip(v, ctx.max_value_chars)}" for k, v in inputs.items()),
        output_field=ctx.output_field,
        prediction=clip(result.prediction.get(ctx.output_field), ctx.max_value_chars),
        gold=gold_text(result.example, ctx),
        score=f"{result.score:.2f}",
        metric_feedback=metric_feedback,
    )
    reply = await opt.complete(
        [{"role": "system", "content": P.LOSS_SYSTEM}, {"role": "user", "content": user}],
        max_tokens=ctx.loss_max_tokens,
    )
    loss = reply.text.strip()
    if result.feedback and result.feedback not in loss:
        loss = f"{loss}\n(Metric feedback: {result.feedback})"
    return loss


# -- backward ----------------------------------------------------------------------------------
def parse_backward(reply: str, fields: list[str]) -> tuple[str, dict[str, str]]:
    """GRADIENT and FEEDBACK[field] sections of a backward reply (NONE becomes empty)."""
    tags = list(re.finditer(r"^\s*(GRADIENT|FEEDBACK\s*\[\s*([A-Za-z_]\w*)\s*\])\s*:", reply, re.M | re.I))
    sections: dict[str, str] = {}
    for i, m in enumerate(tags):
        end = tags[i + 1].start() if i + 1 < len(tags) else len(reply)
        body = reply[m.end():end].strip()
        key = "GRADIENT" if m.group(1).upper().startswith("GRADIENT") else m.group(2)
        sections.setdefault(key, body)
    if not tags and reply.strip():
        sections["GRADIENT"] = reply.strip()  # a model that ignored the format still gave advice
    gradient = sections.get("GRADIENT", "")
    upstream = {f: sections.get(f, "") for f in fields}
    clean = lambda s: "" if is_none(s) else s  # noqa: E731
    return clean(gradient), {f: clean(v) for f, v in upstream.items()}


def _tunable(node: Any) -> bool:
    return isinstance(node, LLMNode) or (isinstance(node, BranchNode) and node.mode == "llm") or (
        isinstance(node, MergeNode) and node.strategy == "select")


async def backward(opt: LMClient, workflow: Workflow, trace: Trace, loss: str, ctx: GradContext) -> BackwardResult:
    """Propagate ``loss`` from the output nodes to the inputs; see the module docstring."""
    sketch = workflow.sketch
    out = BackwardResult()
    for f in sketch.outputs:
        writer = sketch.writer_of(f)
        if writer is not None:
            out.feedback.setdefault(writer.id, []).append(loss)
    gates = sketch.gates()
    for node in reversed(sketch.topological_order()):
        received = out.feedback.get(node.id)
        run = trace.nodes.get(node.id)
        if not received or run is None or run.skipped:
            continue
        producers: dict[str, str] = {}  # field -> producing node id (only inputs that were present: a
        for f in node.reads:            # merge runs without those whose step failed or was skipped)
            w = sketch.writer_of(f)
            if w is not None and f in run.inputs and w.id in trace.nodes and not trace.nodes[w.id].skipped:
                producers[f] = w.id
        gate = gates.get(node.id)
        if gate is not None:
            producers[sketch.node(gate[0]).writes] = gate[0]
        if isinstance(node, MergeNode) and node.strategy != "select":
            for f, pid in producers.items():
                out.feedback.setdefault(pid, []).extend(received)
            continue
        if not _tunable(node) and not producers:
            continue
        gradient, upstream = await _backward_call(opt, workflow, node, run, received, producers, ctx)
        out.calls += 1
        passed_on = False
        for f, text in upstream.items():
            if text and f in producers:
                out.feedback.setdefault(producers[f], []).append(text)
                passed_on = True
        if not gradient and not passed_on and _tunable(node):
            gradient = P.FALLBACK_GRADIENT.format(feedback=" ".join(clip(t, ctx.max_value_chars) for t in received))
            out.kept.append(node.id)
        if gradient and _tunable(node):
            out.gradients[node.id] = gradient
    return out


async def _backward_call(opt: LMClient, workflow: Workflow, node: Any, run: Any, received: list[str],
                         producers: dict[str, str], ctx: GradContext) -> tuple[str, dict[str, str]]:
    params: NodeParams = workflow.params[node.id]
    if _tunable(node):
        instruction = params.instruction
    else:
        instruction = f"(tool '{node.tool}', no instruction)" if isinstance(node, ToolNode) else "(none)"
    inputs = dict(run.inputs)
    gate = workflow.sketch.gates().get(node.id)
    if gate is not None:
        inputs[workflow.sketch.node(gate[0]).writes] = f"route '{gate[1]}' chosen by step '{gate[0]}'"
    output = run.raw[-1] if run.raw else run.output
    user = P.BACKWARD_USER.format(
        workflow_summary=workflow_summary(workflow),
        node_id=node.id,
        node_kind=node.kind,
        purpose=f": {node.purpose}" if node.purpose else "",
        instruction=instruction or "(empty)",
        inputs="\n".join(f"{k}:\n{clip(v, ctx.max_value_chars)}" for k, v in inputs.items()) or "(none)",
        output_field=node.writes,
        output=clip(output, ctx.max_value_chars * 2),
        feedback="\n".join(f"- {clip(t, ctx.max_value_chars)}" for t in received),
        gradient_line=P.GRADIENT_LINE if producers else P.GRADIENT_LINE_SOURCE,
        upstream_lines="\n".join(P.UPSTREAM_LINE.format(field=f) for f in producers),
    )
    reply = await opt.complete(
        [{"role": "system", "content": P.BACKWARD_SYSTEM}, {"role": "user", "content": user}],
        max_tokens=ctx.backward_max_tokens,
    )
    return parse_backward(reply.text, list(producers))


# -- aggregation and step ----------------------------------------------------------------------
async def aggregate(opt: LMClient, node_id: str, instruction: str, gradients: list[str], ctx: GradContext,
                    max_items: int = 8) -> str:
    """One gradient per node over the minibatch; summarised by the optimizer when there are several
    (feeding every example's feedback into one step prompt overflows contexts on long runs)."""
    unique = list(dict.fromkeys(g.strip() for g in gradients if g.strip()))
    if len(unique) <= 1:
        return unique[0] if unique else ""
    items = "\n".join(f"{i}. {clip(g, ctx.max_value_chars)}" for i, g in enumerate(unique[:max_items], 1))
    reply = await opt.complete(
        [{"role": "system", "content": P.AGGREGATE_SYSTEM},
         {"role": "user", "content": P.AGGREGATE_USER.format(node_id=node_id, instruction=instruction or "(empty)",
                                                             count=len(unique), items=items)}],
        max_tokens=ctx.backward_max_tokens,
    )
    return reply.text.strip() or "\n".join(unique)


@dataclass
class Proposal:
    instruction: str
    tools: list[str] | None = None  # None: unchanged


def parse_step(reply: str) -> Proposal | None:
    m = re.search(r"<instruction>(.*?)(?:</instruction>|$)", reply, re.S | re.I)
    if m:
        text = m.group(1).strip()
    else:
        fence = re.search(r"```(?:\w+)?\n(.*?)```", reply, re.S)
        text = (fence.group(1) if fence else reply).strip()
    if not text:
        return None
    tools = None
    t = re.search(r"<tools>(.*?)</tools>", reply, re.S | re.I)
    if t:
        body = t.group(1).strip()
        tools = [] if body.lower() in ("", "none") else [x.strip() for x in body.split(",") if x.strip()]
    return Proposal(text, tools)


async def propose_instructions(
    opt: LMClient,
    workflow: Workflow,
    node: Any,
    gradient: str,
    history: list[tuple[str, float]],
    ctx: GradContext,
    k: int = 1,
    tool_options: list[str] | None = None,
) -> list[Proposal]:
    """``k`` rewrites of the node's instruction from its gradient and earlier attempts."""
    params = workflow.params[node.id]
    fmt = ""
    if isinstance(node, LLMNode) and node.output.extract != "text":
        fmt = f" Its reply is parsed with the '{node.output.extract}' rule, so keep the required answer format."
    hist = ""
    if history:
        hist = P.HISTORY_HEADER + "\n".join(
            f"- score {score:.3f}: {clip(text, 300)}" for text, score in history[-5:]) + "\n"
    tools = ""
    if tool_options:
        tools = P.TOOL_OPTIONS.format(options=", ".join(tool_options), current=", ".join(params.tools) or "none")
    user = P.STEP_USER.format(
        task_description=ctx.task_description,
        node_id=node.id,
        purpose=f" ({node.purpose})" if node.purpose else "",
        reads=", ".join(node.reads),
        writes=node.writes,
        format_note=fmt,
        instruction=params.instruction or "(empty)",
        gradient=gradient,
        history=hist,
        tool_options=tools,
    )
    reply = await opt.complete(
        [{"role": "system", "content": P.STEP_SYSTEM}, {"role": "user", "content": user}],
        n=k,
        temperature=0.0 if k == 1 else 0.8,
        max_tokens=ctx.step_max_tokens,
    )
    seen = {params.instruction.strip()}
    out: list[Proposal] = []
    for text in reply.texts:
        p = parse_step(text)
        if p is None or p.instruction in seen:
            continue
        if p.tools is not None and tool_options is not None:
            p.tools = [t for t in p.tools if t in tool_options]
        seen.add(p.instruction)
        out.append(p)
    return out


def listed(gradients: list[str], ctx: GradContext, max_items: int = 5) -> str:
    """The distinct gradients of a node as a list (the rule step reads them as they are: a small
    model asked to merge them first writes the one example it read last)."""
    unique = list(dict.fromkeys(g.strip() for g in gradients if g.strip()))
    return "\n".join(f"- {clip(g, ctx.max_value_chars // 2)}" for g in unique[:max_items])


def parse_rule(reply: str, max_chars: int = 300) -> str | None:
    """The rule of a ``RULE: ...`` reply (the first such line, or the first non-empty line)."""
    m = re.search(r"^\W*RULE\W*:\s*(.+)$", reply, re.M | re.I)
    text = m.group(1) if m else next((line for line in reply.splitlines() if line.strip()), "")
    text = text.strip().strip("*\"' ").strip()
    if not text or is_none(text):
        return None
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0]


def with_rule(instruction: str, rule: str) -> str:
    """``instruction`` with ``rule`` added under its rules heading (made on the first rule).

    >>> print(with_rule(with_rule("Answer briefly.", "Use digits."), "No units."))
    Answer briefly.
    <BLANKLINE>
    Rules:
    - Use digits.
    - No units.
    """
    if P.RULES_HEADING in instruction.splitlines():
        return f"{instruction.rstrip()}\n- {rule}"
    return f"{instruction.rstrip()}\n\n{P.RULES_HEADING}\n- {rule}"


def rule_count(instruction: str) -> int:
    lines = instruction.splitlines()
    if P.RULES_HEADING not in lines:
        return 0
    return sum(1 for line in lines[lines.index(P.RULES_HEADING) + 1:] if line.startswith("- "))


def node_cases(node_id: str, failing: list[ExampleResult], ctx: GradContext, limit: int = 3) -> str:
    """What the node read and wrote on failing examples, beside the correct final answer: the
    evidence a rule is written from (the gradients alone are a small model's paraphrase of it)."""
    lines: list[str] = []
    for r in failing:
        run = r.trace.nodes.get(node_id) if r.trace is not None else None
        if run is None or run.skipped:
            continue
        lines.append(f"{len(lines) + 1}. read {brief_fields(dict(run.inputs), 200)} | wrote {clip(run.output, 150)}"
                     f" | correct final answer: {clip(gold_text(r.example, ctx), 100)}")
        if len(lines) >= limit:
            break
    return "\n".join(lines) or "(none)"


async def propose_rule(opt: LMClient, workflow: Workflow, node: Any, gradient: str,
                       history: list[tuple[str, float]], ctx: GradContext, retry_terms: list[str] | None = None,
                       seed: int | None = None, cases: str = "(none)") -> str | None:
    """One general rule for the node from the cases it failed on (see :func:`node_cases`), its
    gradients and the rules tried before; ``retry_terms``: the example-specific terms the last
    attempt used (asked again at a sampling temperature)."""
    params = workflow.params[node.id]
    hist = ""
    if history:
        hist = P.RULE_HISTORY_HEADER + "\n".join(f"- {score:.3f}: {clip(text, 200)}" for text, score in history[-5:]) + "\n"
    user = P.RULE_USER.format(
        task_description=ctx.task_description, node_id=node.id,
        purpose=f" ({node.purpose})" if node.purpose else "", reads=", ".join(node.reads), writes=node.writes,
        instruction=params.instruction or "(empty)", cases=cases, gradient=gradient, history=hist,
        retry=P.RULE_RETRY.format(terms=", ".join(f"'{t}'" for t in retry_terms)) if retry_terms else "")
    reply = await opt.complete(
        [{"role": "system", "content": P.RULE_SYSTEM}, {"role": "user", "content": user}],
        temperature=0.7 if retry_terms else 0.0, seed=seed, max_tokens=ctx.rule_max_tokens)
    return parse_rule(reply.text)


def blame_counts(results: list[BackwardResult]) -> Counter:
    c: Counter = Counter()
    for r in results:
        c.update(r.gradients.keys())
    return c


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(max(1, limit))

    async def run(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))
