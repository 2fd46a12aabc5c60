"""Structural proposals that are valid by construction.

For each parent the proposal schema is built from the parent itself: every operator of the library
that applies (:mod:`flowbot.optim.operators`), each target node and option as an enum, and only the
(operator, target, options) choices whose child is new — not already raced — and passes validation.
New node ids and field names are made by the operators in code. The optimizer answers one JSON
object: first a short ``critique`` of the structure (the paper's workflow-level gradient, written
from the parent's failures), then the ``edit``. A provider that decodes under the schema cannot
produce anything else; one that cannot is parsed, repaired once, else the proposal is dropped.

Expanders (what the search skeleton calls):

- :class:`LLMProposal` — FlowBot's default: critique and edit from the optimizer LM;
- :class:`LLMProposal` with ``style="aflow"`` — the AFlow-style baseline's expansion: the
  modification chosen from the experience of modifications already tried from the parent;
- :class:`FixedOrderProposal` — the ablation: the first new choice in the library's prior order.

    >>> from flowbot.graph import LLMNode, OutputFormat, Sketch, Workflow
    >>> from flowbot.optim.operators import OperatorContext
    >>> solve = LLMNode(id="solve", reads=["q"], writes="a", output=OutputFormat(extract="answer"))
    >>> wf = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[solve]))
    >>> choices = new_choices(wf, OperatorContext(tools={}), set())
    >>> sorted({c.op for c in choices})[:2]
    ['format_answer', 'self_consistency']
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Literal

from flowbot.graph.render import to_text
from flowbot.graph.sketch import Workflow
from flowbot.lm.budget import Budget
from flowbot.lm.client import LMClient
from flowbot.lm.structured import complete_json
from flowbot.optim import prompts as P
from flowbot.optim.archive import Archive, ArchiveEntry
from flowbot.optim.events import EventSink, ProposalMade
from flowbot.optim.operators import OPERATORS, EditError, OperatorContext, apply_operator, describe, menu
from flowbot.optim.policies import retry_sampling
from flowbot.optim.search import ProposalCounts, Proposed


@dataclass(frozen=True)
class Choice:
    """One applicable edit: operator, target node and option values, with the child it builds."""

    op: str
    target: str
    options: tuple[tuple[str, Any], ...]
    child: Workflow

    @property
    def edit(self) -> dict[str, Any]:
        return {"op": self.op, "target": self.target, **dict(self.options)}

    @property
    def text(self) -> str:
        return describe(self.op, self.target, **dict(self.options))


def new_choices(parent: Workflow, ctx: OperatorContext, seen_signatures: set[str], max_nodes: int = 12,
                fits: Callable[[Workflow], bool] | None = None) -> list[Choice]:
    """Every (operator, target, options) that applies to ``parent`` and builds a child that is valid,
    within ``max_nodes``, not already raced (its sketch signature is not in ``seen_signatures``) and
    accepted by ``fits`` (the budget can pay for it), in the library's order."""
    choices: list[Choice] = []
    signatures: set[str] = set()
    for name, targets in menu(parent, ctx).items():
        opts = OPERATORS[name].options
        combos = [tuple(zip(opts, values)) for values in itertools.product(*opts.values())] if opts else [()]
        for target in targets:
            for combo in combos:
                try:
                    child = apply_operator(parent, name, target, ctx, **dict(combo))
                except EditError:
                    continue  # the library guarantees this does not happen; never offer it if it does
                sig = child.sketch.signature()
                if len(child.sketch.nodes) > max_nodes or sig in seen_signatures or sig in signatures:
                    continue
                if fits is not None and not fits(child):
                    continue
                signatures.add(sig)
                choices.append(Choice(name, target, combo, child))
    return choices


def proposal_schema(choices: list[Choice], critique_chars: int = 240) -> dict[str, Any]:
    """The JSON schema of one proposal over ``choices``: a bounded critique first, then the edit as
    one alternative per (operator, target) with its option values as enums."""
    alternatives: list[dict[str, Any]] = []
    grouped: dict[tuple[str, str], list[Choice]] = {}
    for c in choices:
        grouped.setdefault((c.op, c.target), []).append(c)
    for (op, target), group in grouped.items():
        props: dict[str, Any] = {"op": {"const": op}, "target": {"const": target}}
        for name in OPERATORS[op].options:
            values = sorted({dict(c.options)[name] for c in group}, key=str)
            props[name] = {"enum": values}
        alternatives.append({"type": "object", "properties": props, "required": list(props),
                             "additionalProperties": False})
    return {"type": "object",
            "properties": {"critique": {"type": "string", "maxLength": critique_chars},
                           "edit": {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]},
            "required": ["critique", "edit"], "additionalProperties": False}


def match_choice(choices: list[Choice], edit: Any) -> Choice | None:
    """The choice an edit object names, or None."""
    if not isinstance(edit, dict):
        return None
    for c in choices:
        if edit.get("op") == c.op and edit.get("target") == c.target and \
                all(edit.get(k) == v for k, v in c.options) and set(edit) <= {"op", "target", *dict(c.options)}:
            return c
    return None


def menu_text(choices: list[Choice]) -> str:
    """The menu shown in the prompt: each operator's summary and its targets."""
    lines, seen = [], set()
    for c in choices:
        if c.op in seen:
            continue
        seen.add(c.op)
        targets = sorted({d.target for d in choices if d.op == c.op})
        opts = OPERATORS[c.op].options
        extra = "".join(f"; {k} one of {', '.join(map(str, v))}" for k, v in opts.items())
        lines.append(f"- {c.op}: {OPERATORS[c.op].summary} (target: {', '.join(targets)}{extra})")
    return "\n".join(lines)


class FixedOrderProposal:
    """Ablation: no optimizer call; the first new choice in the operator library's prior order."""

    method = "fixed-order"

    def __init__(self, ctx: OperatorContext, *, max_nodes: int = 12, on_event: EventSink | None = None) -> None:
        self.ctx, self.max_nodes = ctx, max_nodes
        self.emit: EventSink = on_event or (lambda e: None)

    async def propose(self, parent: ArchiveEntry, archive: Archive, budget: Budget, counts: ProposalCounts,
                      fits: Callable[[Workflow], bool] | None = None) -> Proposed | None:
        choices = new_choices(parent.workflow, self.ctx, set(archive.signatures), self.max_nodes, fits)
        if not choices:
            return None
        c = choices[0]
        counts.made += 1
        counts.valid += 1
        self.emit(ProposalMade(parent=parent.id, status="valid", attempt=1, edit=c.text, method=self.method))
        return Proposed(c.edit, c.text, "", c.child)


class LLMProposal:
    """The optimizer LM critiques the parent's structure and picks one new choice, decoding under
    the proposal schema. ``style``: ``flowbot`` (critique from failures and blame) or ``aflow``
    (a modification chosen from the experience of what was tried from this parent)."""

    def __init__(self, optimizer: LMClient, ctx: OperatorContext, *, task_description: str,
                 style: Literal["flowbot", "aflow"] = "flowbot", attempts: int = 3, retry_temperature: float = 0.8,
                 max_nodes: int = 12, max_tokens: int = 200, critique_chars: int = 240,
                 on_event: EventSink | None = None) -> None:
        self.opt, self.ctx = optimizer, ctx
        self.task_description = task_description
        self.style = style
        self.method = "flowbot" if style == "flowbot" else "aflow"
        self.attempts, self.retry_temperature = attempts, retry_temperature
        self.max_nodes, self.max_tokens, self.critique_chars = max_nodes, max_tokens, critique_chars
        self.emit: EventSink = on_event or (lambda e: None)

    async def propose(self, parent: ArchiveEntry, archive: Archive, budget: Budget, counts: ProposalCounts,
                      fits: Callable[[Workflow], bool] | None = None) -> Proposed | None:
        choices = new_choices(parent.workflow, self.ctx, set(archive.signatures), self.max_nodes, fits)
        if not choices:
            return None
        schema = proposal_schema(choices, self.critique_chars)
        messages = self._messages(parent, choices)
        opt = self.opt.with_budget(budget)
        for attempt in range(self.attempts):
            counts.made += 1
            sampling = retry_sampling(attempt, self.retry_temperature, len(parent.tried))
            reply = await complete_json(opt, messages, schema, max_tokens=self.max_tokens, **sampling)
            value = reply.value if isinstance(reply.value, dict) else None
            choice = match_choice(choices, value.get("edit")) if value else None
            if choice is None:
                counts.invalid += 1
                self.emit(ProposalMade(parent=parent.id, status="invalid", attempt=attempt + 1,
                                       error="; ".join(reply.errors) or "the edit names no offered choice",
                                       method=self.method))
                continue
            counts.valid += 1
            counts.repaired += int(reply.status == "repaired")
            critique = str(value.get("critique", "")) if value else ""
            self.emit(ProposalMade(parent=parent.id, status="valid", attempt=attempt + 1, edit=choice.text,
                                   critique=critique, method=self.method, repaired=reply.status == "repaired",
                                   error="; ".join(reply.errors)))
            return Proposed(choice.edit, choice.text, critique, choice.child)
        return None

    def _messages(self, parent: ArchiveEntry, choices: list[Choice]) -> list[dict[str, str]]:
        cost = f"${parent.cost_per_example:.5f}" if parent.cost_per_example else f"{parent.tokens_per_example:.0f} tokens"
        failures = "\n".join(f"- {f}" for f in parent.failures) or "none recorded"
        if self.style == "aflow":
            experience = "\n".join(
                f"- {t}: {'score %.3f (%+.3f)' % (s, s - parent.val_score) if s is not None else 'not better'}"
                for t, s in parent.tried) or "none yet"
            user = P.AFLOW_USER.format(task_description=self.task_description, score=parent.val_score,
                                       workflow_text=to_text(parent.workflow), experience=experience,
                                       failures=failures, menu=menu_text(choices))
            return [{"role": "system", "content": P.AFLOW_SYSTEM}, {"role": "user", "content": user}]
        blame = ", ".join(f"{n} ({c})" for n, c in sorted(parent.blame.items(), key=lambda x: -x[1])) or "none recorded"
        tried = "\n".join(f"- {t} → {'score %.3f' % s if s is not None else 'not better'}"
                          for t, s in parent.tried) or "none"
        user = P.EDIT_USER.format(task_description=self.task_description, score=parent.val_score, cost=cost,
                                  workflow_text=to_text(parent.workflow), blame=blame, failures=failures,
                                  tried=tried, menu=menu_text(choices), critique_chars=self.critique_chars)
        return [{"role": "system", "content": P.EDIT_SYSTEM}, {"role": "user", "content": user}]
