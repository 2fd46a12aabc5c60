"""A library of named structural operators with strong defaults, for the search loops to propose.

An operator is a tested edit with carefully written default prompts (for 0.5B-1.5B task models:
short, concrete, with the exact output form). Each one says where it applies (``targets``) and
builds a valid workflow there (``apply``); new node ids and field names are always made here with
``fresh_name``, never taken from model text, and the workflow's input and output names are kept.
Only the tools the task allows (``OperatorContext.tools``) are ever used.

    >>> from flowbot.tasks.seeds import build_baseline
    >>> cot = build_baseline("cot", inputs=["question"], output="answer", extract="number")
    >>> ctx = OperatorContext(tools={"python": ["code", "stdin"]})
    >>> sorted(menu(cot, ctx))
    ['program_of_thought', 'self_consistency', 'verify_and_revise', 'vote_pot_cot']
    >>> pot = apply_operator(cot, "program_of_thought", "solve", ctx)
    >>> [n.id for n in pot.sketch.nodes]
    ['write_program', 'run_program', 'check_program', 'solve', 'pick_answer']
    >>> describe("self_consistency", "solve", k=5)
    'self_consistency(solve, k=5)'

The guarantee the loops rely on: for every operator ``menu`` lists, every target and every
combination of its options, ``apply`` returns a workflow that passes
``Workflow.check(known_tools=ctx.tools)`` with the same inputs and outputs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from pydantic import ValidationError

from flowbot.errors import FlowBotError
from flowbot.graph.edits import EditError, Ensemble, _keep_output_names, apply_edit, fresh_name
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
from flowbot.graph.sketch import Sketch, Workflow, WorkflowValidationError
from flowbot.runtime.prompts import label_of

__all__ = [
    "ANSWER_RULES", "OPERATORS", "Operator", "OperatorContext", "apply_operator", "context_for_task",
    "describe", "menu", "option_combinations",
]

#: extraction rules whose reply ends in a short final answer (what votes, checks and formats act on)
ANSWER_RULES = ("answer", "number", "boxed", "label", "regex")
#: answer rules a program can print (a label or a regex answer is not computed)
COMPUTED_RULES = ("answer", "number", "boxed")


@dataclass(frozen=True)
class OperatorContext:
    """What the task allows: its tools (name -> argument names, primary first), the inputs that hold
    passages or context, and its description (used in the default prompts)."""

    tools: Mapping[str, Sequence[str]]
    context_fields: tuple[str, ...] = ()
    task_description: str = ""


def context_for_task(task: Any, signatures: Mapping[str, Sequence[str]]) -> OperatorContext:
    """The context for a :class:`~flowbot.tasks.Task`: its declared tools, with their argument names
    taken from ``signatures`` (e.g. ``ToolRegistry.signatures()``), its context fields and description."""
    declared = list(getattr(task, "tools", None) or [])
    missing = [t for t in declared if t not in signatures]
    if missing:
        raise FlowBotError(f"task {getattr(task, 'name', '?')!r} declares tool(s) {missing} that the tool "
                         f"registry does not have (known: {', '.join(sorted(signatures)) or 'none'})")
    return OperatorContext(tools={t: list(signatures[t]) for t in declared},
                           context_fields=tuple(getattr(task, "context_fields", None) or ()),
                           task_description=str(getattr(task, "description", "") or ""))


class Operator(Protocol):
    name: str
    summary: str
    options: Mapping[str, tuple[Any, ...]]

    def targets(self, wf: Workflow, ctx: OperatorContext) -> list[str]: ...

    def apply(self, wf: Workflow, target: str, ctx: OperatorContext, **options: Any) -> Workflow: ...


# -- default prompts -----------------------------------------------------------------------------
PROGRAM_INSTRUCTION = (
    "{task}Solve the problem by writing a Python program.\n"
    "- Store each number you need from the {inputs} in a variable, then compute the answer step by step in code.\n"
    "- Write a complete program: no input(), no placeholders, nothing left to fill in.\n"
    "- End with one print() of the final answer only: {shape}."
)
PROGRAM_SHAPES = {
    "number": "just the number, without words or units",
    "boxed": "just the value, e.g. 7, 3/4 or sqrt(2), without words",
    "answer": "just the short answer, without a sentence around it",
}
VERIFY_INSTRUCTION = (
    "{task}After the {inputs} comes a draft solution. Check it step by step: make sure every number "
    "and fact it uses matches the {inputs}, and redo each calculation. If the draft is correct, give "
    "its final answer. If you find a mistake, correct it and give the corrected final answer."
)
VERIFY_CODE_INSTRUCTION = (
    "{task}After the {inputs} comes a draft solution. Check its code line by line against the task: "
    "the function name and arguments, every case the task describes, and edge cases such as empty "
    "input. If the code is correct, repeat it unchanged. If you find a mistake, give the corrected code."
)
QUOTE_INSTRUCTION = (
    "{task}Copy the sentences of the {source} that are needed to answer the {question}, word for word, "
    "one per line. Copy every such sentence and nothing else: do not answer and do not explain."
)
ANSWER_FROM_EVIDENCE = "The evidence holds the sentences of the {source} that matter here; answer from the evidence."
FORMAT_INSTRUCTION = (
    "{task}Rewrite the draft answer in the short form the task expects. Keep what it says; change only the form:\n"
    "- a number: digits only, without units, currency or percent signs (12, not \"12 yards\" or \"twelve\");\n"
    "- a name, date or other phrase: only the words of the answer, not a sentence;\n"
    "- several answers: separate them with commas."
)
#: tool output that means the program gave no usable answer (the python tool reports failures
#: as text starting with "Error"; a function that forgot to return prints None)
PROGRAM_FAILED = [
    ("regex", r"^\s*Error"),
    ("regex", r"^\s*(None|nan|NaN)\s*$"),
    ("empty", None),
]
FORMAT_MAX_TOKENS = 128


# -- small helpers -------------------------------------------------------------------------------
class _Names:
    """Fresh node ids and field names for one edit (never clashing with each other or the sketch)."""

    def __init__(self, sketch: Sketch) -> None:
        self.taken = set(sketch.node_ids()) | set(sketch.fields())

    def __call__(self, base: str) -> str:
        name = fresh_name(base, self.taken)
        self.taken.add(name)
        return name


def _task(ctx: OperatorContext) -> str:
    return f"Task: {ctx.task_description.strip()}\n" if ctx.task_description.strip() else ""


def _phrase(fields: Sequence[str]) -> str:
    """``["passage", "question"]`` -> ``"passage and question"``."""
    labels = [label_of(f).lower() for f in fields] or ["inputs"]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _shown(node: LLMNode) -> str:
    return node.output.prompt_field or node.writes


def _splice(wf: Workflow, target: str, new_nodes: list[Any], params: dict[str, NodeParams]) -> Workflow:
    """``wf`` with node ``target`` replaced (in place, keeping the order) by ``new_nodes``."""
    nodes: list[Any] = []
    for n in wf.sketch.nodes:
        nodes += new_nodes if n.id == target else [n]
    all_params = {k: v for k, v in wf.params.items() if k != target}
    all_params.update(params)
    return wf.model_copy(update={"sketch": wf.sketch.model_copy(update={"nodes": nodes}), "params": all_params})


def _gate_like(wf: Workflow, node_id: str, new_ids: list[str]) -> Workflow:
    """Put ``new_ids`` on the branch route of ``node_id`` (steps only it needs run only with it)."""
    gate = wf.sketch.gates().get(node_id)
    if gate is None:
        return wf
    branch = wf.sketch.node(gate[0])
    routes = {k: v + new_ids if k == gate[1] else v for k, v in branch.routes.items()}
    nodes = [n.model_copy(update={"routes": routes}) if n.id == branch.id else n for n in wf.sketch.nodes]
    return wf.model_copy(update={"sketch": wf.sketch.model_copy(update={"nodes": nodes})})


def _gated(sketch: Sketch, node_id: str) -> bool:
    return node_id in sketch.gates()


def _reads_only_inputs(sketch: Sketch, node: Node) -> bool:
    return all(f in sketch.inputs for f in node.reads)


def _answer_rule(sketch: Sketch, field: str) -> str | None:
    """The extraction rule behind a field's value: its llm writer's rule, through merges (None for
    tools, branches and workflow inputs)."""
    w = sketch.writer_of(field)
    if isinstance(w, LLMNode):
        return w.output.extract
    if isinstance(w, MergeNode):
        return next((r for r in (_answer_rule(sketch, f) for f in w.reads) if r is not None), None)
    return None


def _answerish(wf: Workflow, field: str) -> bool:
    """Does ``field`` hold an answer (a final answer, code or a full solution; not notes or quotes):
    what the readers of a removed step can read instead."""
    w = wf.sketch.writer_of(field)
    if isinstance(w, LLMNode):
        return w.output.extract in ANSWER_RULES + ("code", "reasoning")
    if isinstance(w, MergeNode):
        return all(_answerish(wf, f) for f in w.reads)
    if isinstance(w, ToolNode):
        return bool(wf.params[w.id].config.get("answer_only"))
    return False


def _program_chain(names: _Names, target: LLMNode, params: NodeParams, ctx: OperatorContext
                   ) -> tuple[list[Any], dict[str, NodeParams], str]:
    """An llm step that writes a complete program from the target's inputs and the python tool that
    runs it (its output: the last printed line, or text starting with "Error")."""
    program, output = names("program"), names("program_output")
    writer = LLMNode(id=names("write_program"), reads=list(target.reads), writes=program,
                     output=OutputFormat(extract="code"),
                     purpose="writes a complete Python program that prints only the final answer")
    run = ToolNode(id=names("run_program"), tool="python", args={_primary(ctx, "python"): program}, writes=output,
                   purpose="runs the program; its output is the printed answer or an error")
    shape = PROGRAM_SHAPES[target.output.extract]
    instruction = PROGRAM_INSTRUCTION.format(task=_task(ctx), inputs=_phrase(target.reads), shape=shape)
    return [writer, run], {
        writer.id: NodeParams(instruction=instruction, model=params.model, max_tokens=params.max_tokens),
        run.id: NodeParams(config={"answer_only": True}),
    }, output


def _primary(ctx: OperatorContext, tool: str) -> str:
    args = list(ctx.tools.get(tool) or [])
    return args[0] if args else "input"


def _failure_rules(field: str, label: str) -> list[BranchRule]:
    return [BranchRule(field=field, op=op, value=value, label=label) for op, value in PROGRAM_FAILED]  # type: ignore[arg-type]


def _cot_copy(target: LLMNode, writes: str, node_id: str | None = None, purpose: str = "") -> LLMNode:
    """The target writing another field but sending the same prompt (its shown field is kept)."""
    fmt = target.output.model_copy(update={"prompt_field": _shown(target)})
    update: dict[str, Any] = {"writes": writes, "output": fmt}
    if node_id:
        update["id"] = node_id
    if purpose:
        update["purpose"] = purpose
    return target.model_copy(update=update)


def option_combinations(options: Mapping[str, tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    """Every combination of an operator's enum options (one empty dict when it has none)."""
    keys = list(options)
    for values in itertools.product(*(options[k] for k in keys)):
        yield dict(zip(keys, values))


# -- the operator base ---------------------------------------------------------------------------
class _Base:
    name = ""
    summary = ""
    options: Mapping[str, tuple[Any, ...]] = {}

    def targets(self, wf: Workflow, ctx: OperatorContext) -> list[str]:
        if not _valid_parent(wf, ctx):
            return []
        return [n.id for n in wf.sketch.nodes if self._applies(wf, n, ctx)]

    def apply(self, wf: Workflow, target: str, ctx: OperatorContext, **options: Any) -> Workflow:
        chosen = self._options(options)
        if target not in self.targets(wf, ctx):
            where = ", ".join(self.targets(wf, ctx)) or "no node of this workflow"
            raise EditError(f"{self.name} does not apply to node {target!r} (it applies to: {where})")
        copy = wf.model_copy(deep=True)
        try:
            result = self._build(copy, copy.sketch.node(target), ctx, **chosen)
        except ValidationError as exc:
            raise EditError(f"{self.name} builds an invalid node: " +
                            "; ".join(e["msg"] for e in exc.errors())) from None
        return _finish(wf, result, ctx, describe(self.name, target, **chosen))

    def _options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(given) - set(self.options)
        if unknown:
            raise EditError(f"{self.name} has no option(s) {sorted(unknown)} (options: {dict(self.options) or 'none'})")
        chosen = {k: values[0] for k, values in self.options.items()}
        for k, v in given.items():
            if v not in self.options[k]:
                raise EditError(f"{self.name}: option {k}={v!r} is not one of {self.options[k]}")
            chosen[k] = v
        return chosen

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        raise NotImplementedError

    def _build(self, wf: Workflow, target: Any, ctx: OperatorContext, **options: Any) -> Workflow:
        raise NotImplementedError


def _valid_parent(wf: Workflow, ctx: OperatorContext) -> bool:
    """Nothing can be applied to a workflow that is already invalid under the task's tools."""
    return not wf.problems(dict(ctx.tools))


def _finish(before: Workflow, after: Workflow, ctx: OperatorContext, what: str) -> Workflow:
    """Re-validate the result: a valid workflow with the same inputs and outputs, or EditError."""
    try:
        result = Workflow.model_validate(after.model_dump())
        result.check(dict(ctx.tools))
    except (ValidationError, WorkflowValidationError) as exc:
        raise EditError(f"{what} would make the workflow invalid: {exc}") from None
    if result.sketch.inputs != before.sketch.inputs or result.sketch.outputs != before.sketch.outputs:
        raise EditError(f"{what} would change the workflow's inputs or outputs")  # pragma: no cover - a bug
    return result


# -- 1. self-consistency -------------------------------------------------------------------------
class SelfConsistency(_Base):
    name = "self_consistency"
    summary = "sample the step k times (the first greedy, the others at temperature 0.7) and take a majority vote"
    options = {"k": (3, 5)}

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        voted = any(isinstance(r, MergeNode) and r.strategy == "majority" for r in wf.sketch.readers_of(node.writes))
        return (isinstance(node, LLMNode) and node.output.extract in ANSWER_RULES and not voted
                and not _is_formatter(node))

    def _build(self, wf: Workflow, target: LLMNode, ctx: OperatorContext, k: int = 3) -> Workflow:
        base = wf.params[target.id]
        out = apply_edit(wf, Ensemble(node_id=target.id, k=k, strategy="majority", temperature=0.7), dict(ctx.tools))
        merge = out.sketch.writer_of(target.writes)
        assert isinstance(merge, MergeNode)
        copies = [out.sketch.writer_of(f).id for f in merge.reads]  # type: ignore[union-attr]
        nodes = [_cot_copy(target, n.writes, n.id, purpose=f"sample {copies.index(n.id) + 1} of {k} of {target.id}")
                 if n.id in copies else n for n in out.sketch.nodes]
        # the greedy sample sends exactly the original request, so it shares its cache entry
        out.params[copies[0]] = out.params[copies[0]].model_copy(update={"seed": base.seed})
        return out.model_copy(update={"sketch": out.sketch.model_copy(update={"nodes": nodes})})


# -- 2. program of thought -----------------------------------------------------------------------
def _pot_target(wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
    return ("python" in ctx.tools and isinstance(node, LLMNode) and node.output.extract in COMPUTED_RULES
            and _reads_only_inputs(wf.sketch, node) and not _gated(wf.sketch, node.id))


class ProgramOfThought(_Base):
    name = "program_of_thought"
    summary = ("write a complete Python program that prints the answer and run it; only when the program fails "
               "or prints nothing does the step's chain of thought answer instead")

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        return _pot_target(wf, node, ctx)

    def _build(self, wf: Workflow, target: LLMNode, ctx: OperatorContext) -> Workflow:
        names = _Names(wf.sketch)
        base = wf.params[target.id]
        chain, params, program_out = _program_chain(names, target, base, ctx)
        cot_field = names(f"{target.writes}_cot")
        status = names("program_status")
        check = BranchNode(id=names("check_program"), reads=[program_out], writes=status, mode="rule",
                           rules=_failure_rules(program_out, "fallback"),
                           routes={"program": [], "fallback": [target.id]}, default="program",
                           purpose="runs the chain of thought only when the program gave no answer")
        fallback = _cot_copy(target, cot_field, purpose="chain-of-thought answer, used when the program fails")
        pick = MergeNode(id=names(f"pick_{target.writes}"), reads=[cot_field, program_out], writes=target.writes,
                         strategy="first", purpose="the fallback's answer when it ran, else the program's")
        params.update({check.id: NodeParams(), pick.id: NodeParams(), target.id: base})
        return _splice(wf, target.id, [*chain, check, fallback, pick], params)


# -- 3. vote over program of thought and chain of thought ----------------------------------------
class VotePotCot(_Base):
    name = "vote_pot_cot"
    summary = ("majority vote over a Python program's printed answer, the step's greedy chain-of-thought answer "
               "and one sampled one (a failed program does not vote)")

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        return _pot_target(wf, node, ctx)

    def _build(self, wf: Workflow, target: LLMNode, ctx: OperatorContext) -> Workflow:
        names = _Names(wf.sketch)
        base = wf.params[target.id]
        chain, params, program_out = _program_chain(names, target, base, ctx)
        program_answer, status = names("program_answer"), names("program_status")
        keep = MergeNode(id=names("keep_program_answer"), reads=[program_out], writes=program_answer,
                         strategy="first", purpose="passes on the program's answer when it gave one")
        check = BranchNode(id=names("check_program"), reads=[program_out], writes=status, mode="rule",
                           rules=_failure_rules(program_out, "failed"),
                           routes={"program": [keep.id], "failed": []}, default="program",
                           purpose="lets the program vote only when it printed an answer")
        greedy = _cot_copy(target, names(f"{target.writes}_cot"), purpose="greedy chain-of-thought answer")
        sample = _cot_copy(target, names(f"{target.writes}_cot"), names(f"{target.id}_sample"),
                           purpose="sampled chain-of-thought answer")
        # ties go to the earliest candidate: the program when it ran, else the greedy answer
        vote = MergeNode(id=names(f"vote_{target.writes}"), reads=[program_answer, greedy.writes, sample.writes],
                         writes=target.writes, strategy="majority",
                         purpose="majority of the program's and the chains of thought's answers")
        params.update({
            keep.id: NodeParams(), check.id: NodeParams(), vote.id: NodeParams(), target.id: base,
            sample.id: base.model_copy(update={"temperature": max(base.temperature, 0.7),
                                               "seed": (base.seed or 0) + 1}, deep=True),
        })
        return _splice(wf, target.id, [*chain, check, keep, greedy, sample, vote], params)


# -- 4. extract then answer ----------------------------------------------------------------------
class ExtractThenAnswer(_Base):
    name = "extract_then_answer"
    summary = ("first copy the passage sentences the question needs, word for word; the step then answers "
               "from those quotes instead of the whole passage")

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        return (isinstance(node, LLMNode) and node.output.extract in ANSWER_RULES
                and any(f in ctx.context_fields for f in node.reads))

    def _build(self, wf: Workflow, target: LLMNode, ctx: OperatorContext) -> Workflow:
        names = _Names(wf.sketch)
        base = wf.params[target.id]
        sources = [f for f in target.reads if f in ctx.context_fields]
        rest = [f for f in target.reads if f not in sources]
        evidence = names("evidence")
        source = _phrase(sources)
        quote = LLMNode(id=names("quote_evidence"), reads=list(target.reads), writes=evidence,
                        output=OutputFormat(extract="text"),
                        purpose=f"copies the sentences of the {source} the answer needs")
        answer = target.model_copy(update={"reads": rest + [evidence]})
        note = ANSWER_FROM_EVIDENCE.format(source=source)
        instruction = f"{base.instruction.rstrip()}\n{note}" if base.instruction.strip() else note
        params = {
            quote.id: NodeParams(instruction=QUOTE_INSTRUCTION.format(task=_task(ctx), source=source,
                                                                      question=_phrase(rest) if rest else "question"),
                                 model=base.model, max_tokens=base.max_tokens),
            # demos showed the whole passage; the inner loop bootstraps new ones for the new inputs
            target.id: base.model_copy(update={"instruction": instruction, "demos": []}, deep=True),
        }
        return _gate_like(_splice(wf, target.id, [quote, answer], params), target.id, [quote.id])


# -- 5. verify and revise ------------------------------------------------------------------------
class VerifyAndRevise(_Base):
    name = "verify_and_revise"
    summary = ("a verifier reads the step's full reasoning and the task inputs, checks it step by step and "
               "gives the corrected final answer")

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        return (isinstance(node, LLMNode) and node.output.extract in ANSWER_RULES + ("code",)
                and not _is_formatter(node))

    def _build(self, wf: Workflow, target: LLMNode, ctx: OperatorContext) -> Workflow:
        names = _Names(wf.sketch)
        base = wf.params[target.id]
        draft = names("draft_solution")
        fmt = target.output
        # the draft keeps its whole reply but sends the same prompt as before (same final-line request)
        draft_fmt = fmt.model_copy(update={"extract": "reasoning", "final": fmt.extract, "prompt_field": _shown(target)})
        drafting = target.model_copy(update={"writes": draft, "output": draft_fmt})
        template = VERIFY_CODE_INSTRUCTION if fmt.extract == "code" else VERIFY_INSTRUCTION
        verifier = LLMNode(id=names(f"verify_{target.id}"), reads=[*target.reads, draft], writes=target.writes,
                           output=fmt.model_copy(), purpose=f"checks the full reasoning of {target.id} and corrects it")
        params = {
            target.id: base,
            verifier.id: NodeParams(instruction=template.format(task=_task(ctx), inputs=_phrase(target.reads)),
                                    model=base.model, max_tokens=base.max_tokens),
        }
        return _splice(wf, target.id, [drafting, verifier], params)


# -- 6. format the answer ------------------------------------------------------------------------
class FormatAnswer(_Base):
    name = "format_answer"
    summary = ("a cheap last step rewrites the answer into the exact short form the task expects (digits without "
               "units, a short span instead of a sentence)")

    def _applies(self, wf: Workflow, node: Node, ctx: OperatorContext) -> bool:
        s = wf.sketch
        return (node.writes in s.outputs and isinstance(node, (LLMNode, MergeNode))
                and _answer_rule(s, node.writes) == "answer" and not _is_formatter(node))

    def _build(self, wf: Workflow, target: Any, ctx: OperatorContext) -> Workflow:
        names = _Names(wf.sketch)
        field = target.writes
        draft = names(f"draft_{field}")
        if isinstance(target, LLMNode):
            moved = _cot_copy(target, draft)
        else:
            moved = target.model_copy(update={"writes": draft})
        question = [f for f in wf.sketch.inputs if f not in ctx.context_fields]
        formatter = LLMNode(id=names(f"format_{field}"), reads=[*question, draft], writes=field,
                            output=OutputFormat(extract="answer"), purpose=_FORMAT_PURPOSE)
        model = wf.params[target.id].model if isinstance(target, LLMNode) else None
        params = {
            target.id: wf.params[target.id],
            formatter.id: NodeParams(instruction=FORMAT_INSTRUCTION.format(task=_task(ctx)), model=model,
                                     max_tokens=FORMAT_MAX_TOKENS),
        }
        return _splice(wf, target.id, [moved, formatter], params)


_FORMAT_PURPOSE = "rewrites the answer into the task's short answer form"


def _is_formatter(node: Node) -> bool:
    return isinstance(node, LLMNode) and node.purpose == _FORMAT_PURPOSE


# -- 7. remove a step ----------------------------------------------------------------------------
class RemoveStep(_Base):
    name = "remove_step"
    summary = ("drop a step that is not the only producer of an answer (a verifier, a formatter, one sample of a "
               "vote, a quoting step); its readers read what it read")

    def targets(self, wf: Workflow, ctx: OperatorContext) -> list[str]:
        if not _valid_parent(wf, ctx):
            return []
        out = []
        for n in wf.sketch.nodes:
            plan = _removal_plan(wf, n, ctx)
            if plan is not None and _succeeds(lambda: _finish(wf, plan(wf.model_copy(deep=True)), ctx, "")):
                out.append(n.id)
        return out

    def _build(self, wf: Workflow, target: Any, ctx: OperatorContext) -> Workflow:
        plan = _removal_plan(wf, target, ctx)
        assert plan is not None  # targets() checked
        return plan(wf)


Plan = Callable[[Workflow], Workflow]


def _succeeds(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except (EditError, ValidationError, WorkflowValidationError, KeyError, ValueError):
        return False
    return True


def _removal_plan(wf: Workflow, node: Node, ctx: OperatorContext) -> Plan | None:
    """How to remove ``node`` so that its readers read a sensible replacement, or None."""
    s = wf.sketch
    if isinstance(node, (BranchNode, ToolNode)):
        return None  # a branch's routes and a tool's consumers lose their meaning without them
    readers = s.readers_of(node.writes)
    revised = [f for f in node.reads if f not in s.inputs and _answerish(wf, f)]
    if isinstance(node, LLMNode) and revised:  # a verifier or a formatter: its readers read the draft again
        return lambda w: _replace_by(w, node.id, revised[-1])
    # a sample or a fallback that only feeds merges with other inputs: the merges lose one input
    if node.writes not in s.outputs and readers and all(isinstance(r, MergeNode) and len(r.reads) >= 2
                                                        for r in readers):
        return lambda w: _drop_from_merges(w, node.id)
    if isinstance(node, MergeNode):  # a vote or a pick: the first answer that always runs takes over
        if _gated(s, node.id) or len(node.reads) < 2:
            return None
        ungated = [f for f in node.reads if not _gated(s, getattr(s.writer_of(f), "id", "")) and _answerish(wf, f)]
        return (lambda w: _replace_by(w, node.id, ungated[0])) if ungated else None
    sources = [f for f in node.reads if f in ctx.context_fields]
    if (isinstance(node, LLMNode) and node.output.extract == "text" and node.writes not in s.outputs
            and len(sources) == 1 and readers and all(isinstance(r, LLMNode) for r in readers)):
        return lambda w: _replace_by(w, node.id, sources[0])  # a quoting step: read the passage again
    return None


def _drop_from_merges(wf: Workflow, node_id: str) -> Workflow:
    field = wf.sketch.node(node_id).writes
    nodes = [n.model_copy(update={"reads": [f for f in n.reads if f != field]}) if field in n.reads else n
             for n in wf.sketch.nodes]
    return _prune(_without(wf.model_copy(update={"sketch": wf.sketch.model_copy(update={"nodes": nodes})}), node_id))


def _replace_by(wf: Workflow, node_id: str, replacement: str) -> Workflow:
    """Remove a node; its readers (and the outputs) read ``replacement``, output names are kept."""
    s = wf.sketch
    field = s.node(node_id).writes
    note_source = _phrase([replacement])
    nodes = []
    for n in s.nodes:
        if field in n.reads:
            reads = list(dict.fromkeys(replacement if f == field else f for f in n.reads))
            if replacement in s.inputs:  # inputs in the workflow's order, as seeds read them
                reads = [f for f in s.inputs if f in reads] + [f for f in reads if f not in s.inputs]
            n = n.model_copy(update={"reads": reads})
            if isinstance(n, LLMNode):  # undo extract_then_answer's note on the answering step
                note = "\n" + ANSWER_FROM_EVIDENCE.format(source=note_source)
                p = wf.params[n.id]
                if p.instruction.endswith(note):
                    wf.params[n.id] = p.model_copy(update={"instruction": p.instruction[: -len(note)]})
        nodes.append(n)
    outputs = [replacement if f == field else f for f in s.outputs]
    wf = wf.model_copy(update={"sketch": s.model_copy(update={"nodes": nodes, "outputs": outputs})})
    wf = _keep_output_names(s.outputs, _without(wf, node_id), "remove_step")
    return _prune(_restore_drafts(wf))


def _without(wf: Workflow, node_id: str) -> Workflow:
    nodes = []
    for n in wf.sketch.nodes:
        if n.id == node_id:
            continue
        if isinstance(n, BranchNode):
            n = n.model_copy(update={"routes": {k: [t for t in v if t != node_id] for k, v in n.routes.items()}})
        nodes.append(n)
    params = {k: v for k, v in wf.params.items() if k != node_id}
    return wf.model_copy(update={"sketch": wf.sketch.model_copy(update={"nodes": nodes}), "params": params})


def _prune(wf: Workflow) -> Workflow:
    """Drop steps whose work nobody uses any more (no reader, not an output; a branch gating nothing)."""
    while True:
        s = wf.sketch
        read = {f for n in s.nodes for f in n.reads} | set(s.outputs)
        dead = next((n.id for n in s.nodes if n.writes not in read and not (
            isinstance(n, BranchNode) and any(n.routes.values()))), None)
        if dead is None:
            return wf
        wf = _without(wf, dead)


def _restore_drafts(wf: Workflow) -> Workflow:
    """A 'reasoning' draft nobody verifies any more answers with its final rule again; a shown field
    equal to the written one is dropped (so undoing an operator gives back the same structure)."""
    nodes = []
    for n in wf.sketch.nodes:
        if isinstance(n, LLMNode):
            fmt = n.output
            readers = wf.sketch.readers_of(n.writes)
            if fmt.extract == "reasoning" and fmt.final and (n.writes in wf.sketch.outputs or all(
                    isinstance(r, MergeNode) for r in readers)):
                fmt = fmt.model_copy(update={"extract": fmt.final, "final": None})
            if fmt.prompt_field == n.writes:
                fmt = fmt.model_copy(update={"prompt_field": None})
            n = n.model_copy(update={"output": fmt})
        nodes.append(n)
    return wf.model_copy(update={"sketch": wf.sketch.model_copy(update={"nodes": nodes})})


# -- the library ---------------------------------------------------------------------------------
#: the default prior order: cheap, targeted edits first (a program for computed answers, a format
#: step), then sampling and votes (several calls per example), then the costlier rewrites
OPERATORS: dict[str, Operator] = {op.name: op for op in (
    ProgramOfThought(), FormatAnswer(), SelfConsistency(), VotePotCot(), ExtractThenAnswer(),
    VerifyAndRevise(), RemoveStep(),
)}


def menu(wf: Workflow, ctx: OperatorContext) -> dict[str, list[str]]:
    """Operator name -> the node ids it applies to, for operators with at least one target (in the
    library's prior order)."""
    out: dict[str, list[str]] = {}
    for name, op in OPERATORS.items():
        targets = op.targets(wf, ctx)
        if targets:
            out[name] = targets
    return out


def apply_operator(wf: Workflow, name: str, target: str, ctx: OperatorContext, **options: Any) -> Workflow:
    """Apply one operator of the library (raises EditError for an unknown operator, target or option)."""
    if name not in OPERATORS:
        raise EditError(f"unknown operator {name!r}; use one of {', '.join(OPERATORS)}")
    return OPERATORS[name].apply(wf, target, ctx, **options)


def describe(name: str, target: str, **options: Any) -> str:
    """One line for logs and reports: ``self_consistency(solve, k=5)``."""
    return f"{name}({', '.join([target, *(f'{k}={v}' for k, v in options.items())])})"
