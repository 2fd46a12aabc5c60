"""How an llm node's fields become chat messages (the "adapter", apart from transport).

Layout for prompt-prefix reuse on local engines: everything shared across examples comes first
(system text = instruction + output format + tools, then the few-shot demos as chat turns) and the
example's own field values come last, in the final user message.
"""

from __future__ import annotations

from typing import Any

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode, NodeParams, OutputFormat
from flowbot.scoring.values import format_value

_FORMAT_HINTS = {
    "text": "",
    "answer": "End your reply with a final line of the form 'Answer: <{field}>'.",
    "number": "End your reply with a final line of the form 'Answer: <number>' (just the number).",
    "boxed": "Put the final {field} inside \\boxed{{}}.",
    "json": "Reply with a single JSON object and nothing else.",
    "code": "Reply with the complete Python code in one ```python code block.",
    "regex": "",
}


def label_of(field: str) -> str:
    return field.replace("_", " ").strip().capitalize()


def render_fields(values: dict[str, Any]) -> str:
    return "\n\n".join(f"{label_of(k)}:\n{format_value(v)}" for k, v in values.items())


def shown_field(node: LLMNode) -> str:
    """The field name the prompt uses for the node's output (``output.prompt_field`` or ``writes``)."""
    return node.output.prompt_field or node.writes


def output_hint(node: LLMNode) -> str:
    fmt: OutputFormat = node.output
    # a 'reasoning' node keeps its whole reply but asks for the final line of its 'final' rule
    rule = (fmt.final or "answer") if fmt.extract == "reasoning" else fmt.extract
    field = label_of(shown_field(node)).lower()
    hint = _FORMAT_HINTS.get(rule, "").format(field=field)
    if rule == "label" and fmt.labels:
        hint = f"End your reply with a final line of the form 'Answer: <label>' where <label> is one of: {', '.join(fmt.labels)}."
    if fmt.description:
        hint = (hint + " " if hint else "") + f"The {field} is {fmt.description}."
    return hint


def tool_hint(tool_descriptions: dict[str, str]) -> str:
    lines = [
        "You may use tools. To call one, write a line 'Action: <tool>[<input>]' and stop; you will then "
        "get 'Observation: <result>'. Call a tool only when it helps; when you know the answer, give it "
        "as instructed above without an Action line.",
        "Tools:",
    ]
    lines += [f"- {name}: {desc}" for name, desc in tool_descriptions.items()]
    return "\n".join(lines)


#: the last observation of a ReAct loop that has used up its tool steps: without it a model that
#: keeps calling tools answers with one more ``Action:`` line, which is no answer
LAST_OBSERVATION = "Observation: {observation}\n\nNo more tool calls: give your final answer now, as instructed."


def observation_text(observation: str, last: bool) -> str:
    """The message that shows a tool's result; the last one also asks for the final answer.

    >>> observation_text("83", last=False)
    'Observation: 83'
    """
    return LAST_OBSERVATION.format(observation=observation) if last else f"Observation: {observation}"


def system_text(instruction: str, *parts: str) -> str:
    return "\n\n".join(p for p in (instruction.strip(), *parts) if p)


def llm_messages(
    node: LLMNode,
    params: NodeParams,
    inputs: dict[str, Any],
    tool_descriptions: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    system = system_text(
        params.instruction or f"Given the inputs, produce the {label_of(shown_field(node)).lower()}.",
        output_hint(node),
        tool_hint(tool_descriptions) if tool_descriptions else "",
    )
    messages = [{"role": "system", "content": system}]
    for demo in params.demos:
        messages.append({"role": "user", "content": render_fields({f: demo.inputs.get(f) for f in node.reads})})
        messages.append({"role": "assistant", "content": demo.output})
    messages.append({"role": "user", "content": render_fields(inputs)})
    return messages


def branch_messages(node: BranchNode, params: NodeParams, inputs: dict[str, Any]) -> list[dict[str, str]]:
    labels = ", ".join(node.routes)
    system = system_text(
        params.instruction or "Classify the input.",
        f"Reply with a final line of the form 'Answer: <label>' where <label> is one of: {labels}.",
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": render_fields(inputs)}]


def select_messages(
    node: MergeNode, params: NodeParams, candidates: list[Any], context: dict[str, Any]
) -> list[dict[str, str]]:
    system = system_text(
        params.instruction or "Several candidate answers follow. Pick the one most likely to be correct.",
        "Reply with a final line of the form 'Answer: <number of the best candidate>'.",
    )
    body = render_fields(context) + "\n\n" if context else ""
    body += "\n\n".join(f"Candidate {i}:\n{format_value(c)}" for i, c in enumerate(candidates, 1))
    return [{"role": "system", "content": system}, {"role": "user", "content": body}]
