"""The optimizer's meta-prompts, as named templates apart from the control flow.

They are plain ``str.format`` templates so they can be read, diffed and tested without reading the
loops. Replies use simple tagged lines (``GRADIENT: ...``), which small local models follow far more
reliably than JSON; the edit proposal is the one place that asks for JSON, decoded under a schema
built from the parent workflow (see :mod:`flowbot.optim.proposal`). Each kind of request has a stable
name (:data:`NAMED`) that tests script their replies by.
"""

from __future__ import annotations

LOSS_SYSTEM = (
    "You evaluate the output of an AI workflow against the correct answer. Be specific and brief: "
    "say what is wrong with the output and why, in at most three sentences. Do not solve the task again "
    "at length."
)

LOSS_USER = """Task: {task_description}

Inputs:
{inputs}

Workflow output ({output_field}):
{prediction}

Correct answer:
{gold}

Score: {score} (1.0 is perfect){metric_feedback}

What is wrong with the output?"""

BACKWARD_SYSTEM = (
    "You are improving one step of a multi-step AI workflow by finding where an error came from. "
    "You see one step: its instruction, the inputs it received, the output it produced, and feedback "
    "on that output from later steps. Decide whether this step itself made the mistake, and whether "
    "any of its inputs (produced by earlier steps) were already wrong."
)

BACKWARD_USER = """Workflow: {workflow_summary}

Step '{node_id}' ({node_kind}){purpose}
Instruction of this step:
<<<
{instruction}
>>>

Inputs it received:
{inputs}

Output it produced ({output_field}):
<<<
{output}
>>>

Feedback on this output from later steps:
{feedback}

Reply with exactly these lines:
{gradient_line}
{upstream_lines}"""

# A step that reads only the workflow's own inputs (always correct) cannot pass the blame on, so it is
# not offered NONE: small models otherwise pick the NONE shown in the format and the error vanishes.
GRADIENT_LINE = ("GRADIENT: <how this step's instruction should change to avoid the mistake, or NONE if "
                 "this step did its job correctly given its inputs>")
GRADIENT_LINE_SOURCE = ("GRADIENT: <how this step's instruction should change to avoid the mistake; its "
                        "inputs are the task's own inputs, so the mistake is this step's>")

# When a step keeps the blame (no gradient, nothing passed upstream), the feedback it received
# becomes its gradient: an error in the output must be explained by some step.
FALLBACK_GRADIENT = "The output of this step was judged wrong: {feedback} Change the instruction to avoid this."

UPSTREAM_LINE = "FEEDBACK[{field}]: <what was wrong with the input '{field}', or NONE if it was fine>"

AGGREGATE_SYSTEM = (
    "You merge feedback about one step of an AI workflow, gathered on several examples, into one "
    "short list of concrete changes to its instruction. Keep what recurs; drop what is specific to "
    "a single example."
)

AGGREGATE_USER = """Step '{node_id}' instruction:
<<<
{instruction}
>>>

Feedback from {count} examples:
{items}

Write at most five bullet points of changes to make."""

STEP_SYSTEM = (
    "You write instructions (prompts) for one step of an AI workflow run by a language model. "
    "Given the current instruction and feedback on its mistakes, write an improved instruction. "
    "Keep what works, fix what the feedback says, stay general (never copy a specific example's "
    "answer), and keep it concise."
)

STEP_USER = """Task: {task_description}

Step '{node_id}'{purpose}: reads {reads}; writes {writes}.{format_note}

Current instruction:
<<<
{instruction}
>>>

Feedback on its mistakes:
{gradient}
{history}{tool_options}
Write the improved instruction between <instruction> and </instruction>."""

# The rule step (``InnerConfig.step = "rule"``): instead of rewriting the whole instruction, the
# optimizer adds one general rule to it. Small optimizer models rewrite an instruction into the one
# example they were shown; a single bounded rule appended to the kept instruction cannot erase the task.
RULE_SYSTEM = (
    "You improve the instruction of one step of an AI workflow run by a small language model. From "
    "feedback on its mistakes, write ONE new general rule to add to its instruction: one sentence that "
    "helps on every input of the task. Never mention a name, number or fact of a particular example."
)

RULE_USER = """Task: {task_description}

Step '{node_id}'{purpose}: reads {reads}; writes {writes}.

Current instruction:
<<<
{instruction}
>>>

Examples where the workflow's final answer was wrong (what this step read, what it wrote, and the
correct final answer):
{cases}

Feedback on its mistakes, from different examples:
{gradient}
{history}{retry}
Write the rule on one line that starts with RULE:"""

RULE_HISTORY_HEADER = "\nRules already tried for this step, with the validation score they reached (write a different one):\n"
RULE_RETRY = "\nYour last rule mentioned {terms}, which belong to one example. Write a rule for every input.\n"
#: the heading under which added rules are listed in an instruction
RULES_HEADING = "Rules:"

HISTORY_HEADER = "\nEarlier attempts for this step and their validation scores (higher is better):\n"

TOOL_OPTIONS = (
    "\nThis step may call tools. Available: {options}. Currently enabled: {current}. "
    "If the set should change, also write <tools>comma-separated names</tools> (or <tools>none</tools>)."
)

EDIT_SYSTEM = (
    "You design the structure of AI workflows: graphs of language-model calls, tool calls, branches and "
    "merges. Read how the current workflow fails, criticise its structure in one or two sentences, and "
    "choose the ONE structural edit from the menu most likely to raise its score. Cost matters too: "
    "more calls cost more."
)

EDIT_USER = """Task: {task_description}

Current workflow (validation score {score:.3f}, {cost} per example):
{workflow_text}

Steps most often blamed for errors: {blame}

Typical failures:
{failures}

Edits already tried from this workflow:
{tried}

Menu of edits (operator: what it does):
{menu}

Reply with one JSON object: "critique" (at most {critique_chars} characters: what kind of mistake the
workflow makes and which edit addresses it), then "edit" ({{"op": ..., "target": ...}} plus the
operator's options)."""

AFLOW_SYSTEM = (
    "You optimize AI workflows built from operators (generate, review and revise, ensemble, programmer, "
    "format, ...). Propose ONE operator modification that should raise the score, learning from the "
    "modifications already tried and their results."
)

AFLOW_USER = """Task: {task_description}

Current workflow (score {score:.3f}):
{workflow_text}

Modifications already tried from it and their results:
{experience}

Failures of the current workflow:
{failures}

Operators you can apply (operator: what it does):
{menu}

Reply with one JSON object: "critique" (a short analysis of what to change and why), then "edit"
({{"op": ..., "target": ...}} plus the operator's options)."""

#: every optimizer request by a stable name: (its system text, its user template). Tests script
#: their replies by these names (``flowbot.testing.optimizer_prompt``), which follow the text when
#: a prompt is reworded; a new kind of optimizer request gets a name here.
NAMED: dict[str, tuple[str, str]] = {
    "loss": (LOSS_SYSTEM, LOSS_USER),
    "backward": (BACKWARD_SYSTEM, BACKWARD_USER),
    "aggregate": (AGGREGATE_SYSTEM, AGGREGATE_USER),
    "rewrite": (STEP_SYSTEM, STEP_USER),
    "rule": (RULE_SYSTEM, RULE_USER),
    "edit": (EDIT_SYSTEM, EDIT_USER),
    "aflow": (AFLOW_SYSTEM, AFLOW_USER),
}
