"""The outer loop: search over sketches with structural edits, each candidate tuned by the inner
loop before it is judged.

Round: pick a tuned sketch from the archive (UCB) → the optimizer critiques its structure from the
inner loop's diagnostics (blamed nodes, typical failures) and proposes one edit from the closed
vocabulary as JSON → the edit is checked against the IR (repaired once, else dropped; a sketch
already in the archive is skipped) → the child, warm-started with its parent's parameters for the
untouched nodes, is tuned by the inner loop within its share of the budget → scored on validation
→ archived. Stops at ``rounds``, the budget, or ``patience`` rounds without a better best.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from flowbot.graph.edits import EDIT_OPS, EditError, apply_edit, describe_edit, parse_edit
from flowbot.graph.render import to_text
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.lm.budget import Budget
from flowbot.lm.client import LMClient
from flowbot.optim import prompts as P
from flowbot.optim.archive import Archive, ArchiveEntry, Objective
from flowbot.optim.evaluation import EventSink
from flowbot.optim.inner import InnerResult
from flowbot.optim.policies import UCBSelection, retry_sampling
from flowbot.runtime.extract import extract_json

#: tune(workflow, budget, label) -> InnerResult; the driver binds the inner loop to a budget
Tuner = Callable[[Workflow, Budget | None, str], Awaitable[InnerResult]]


@dataclass
class OuterConfig:
    rounds: int = 4  # edit proposals that become candidates
    patience: int = 3
    candidate_share: float = 0.3  # at most this share of the remaining budget per candidate
    proposal_attempts: int = 3  # a duplicate or unrepairable proposal is retried, sampled (see _propose)
    retry_temperature: float = 0.8
    exploration: float = 0.3
    failures_shown: int = 3
    max_nodes: int = 12
    edit_max_tokens: int = 600


@dataclass
class OuterResult:
    archive: Archive
    best: ArchiveEntry
    stopped: str | None
    rounds: int


class OuterLoop:
    def __init__(
        self,
        tune: Tuner,
        optimizer: LMClient,
        *,
        task_description: str,
        tools: dict[str, list[str]],
        config: OuterConfig | None = None,
        objective: Objective | None = None,
        budget: Budget | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.tune = tune
        self.opt = optimizer
        self.task_description = task_description
        self.tools = tools
        self.cfg = config or OuterConfig()
        self.objective = objective or Objective()
        self.budget = budget
        self.emit = on_event or (lambda e: None)
        self.selection = UCBSelection(self.cfg.exploration)

    async def search(self, seed: Workflow) -> OuterResult:
        archive = Archive()
        stopped: str | None = None
        rounds = 0
        try:
            seed_entry = await self._candidate(archive, seed, None, None, "seed")
            if seed_entry is not None:  # always: an unscored seed raises BudgetExceeded
                archive.add(seed_entry)
            no_gain = 0
            for rounds in range(1, self.cfg.rounds + 1):
                best_before = self.objective(archive.best(self.objective))
                parent = self.selection.select(archive.entries, self.objective)
                parent.expansions += 1
                proposal = await self._propose(archive, parent)
                if proposal is not None:
                    edit, child = proposal
                    entry = await self._candidate(archive, child, parent, edit, describe_edit(edit))
                    if entry is not None:
                        archive.add(entry)
                    parent.tried[-1] = (parent.tried[-1][0], entry.val_score if entry else None)
                if self.budget is not None and self.budget.exhausted:
                    stopped = self.budget.exhausted_reason()
                    break
                gained = self.objective(archive.best(self.objective)) > best_before + 1e-12
                no_gain = 0 if gained else no_gain + 1
                if no_gain >= self.cfg.patience:
                    self.emit({"type": "outer_patience", "round": rounds})
                    break
        except BudgetExceeded as exc:
            stopped = str(exc)
        if not archive.entries:
            raise BudgetExceeded(stopped or "the budget ran out before the seed workflow was scored")
        return OuterResult(archive, archive.best(self.objective), stopped, rounds)

    # -- one candidate -----------------------------------------------------------------------
    def _candidate_budget(self, label: str) -> Budget | None:
        if self.budget is None or self.budget.limits.is_unlimited():
            return None
        lim, spent, share = self.budget.limits, self.budget.spent, self.cfg.candidate_share
        limits: dict[str, Any] = {}
        if lim.max_calls is not None:
            limits["max_calls"] = max(1, int((lim.max_calls - spent.calls) * share))
        if lim.max_tokens is not None:
            limits["max_tokens"] = max(1, int((lim.max_tokens - spent.tokens) * share))
        if lim.max_usd is not None:
            limits["max_usd"] = max(1e-9, (lim.max_usd - spent.usd) * share)
        return self.budget.child(f"candidate {label}", **limits)

    async def _candidate(self, archive: Archive, workflow: Workflow, parent: ArchiveEntry | None,
                         edit: Any, edit_text: str) -> ArchiveEntry | None:
        entry_id = f"c{len(archive.entries)}"
        budget = self._candidate_budget(entry_id) if parent is not None else None
        inner = await self.tune(workflow, budget, f"[{entry_id}] ")
        if inner.val.requested and not inner.val.results:
            if parent is None or (self.budget is not None and self.budget.exhausted):
                raise BudgetExceeded(inner.stopped or "budget used up before the candidate was scored")
            # only its own share ran out: drop this candidate, the search goes on with what is left
            self.emit({"type": "candidate_rejected", "parent": parent.id, "edit": edit_text,
                       "reason": f"not scored within its budget share ({inner.stopped})"})
            return None
        blame = dict(inner.blame)
        entry = ArchiveEntry(
            id=entry_id, workflow=inner.workflow, val_score=inner.val_score,
            cost_per_example=inner.val.cost_per_example(), tokens_per_example=inner.val.tokens_per_example(),
            parent=parent.id if parent else None,
            edit=edit.model_dump(mode="json") if edit is not None else None, edit_text=edit_text,
            blame=blame, failures=[f.brief() for f in inner.failures[-self.cfg.failures_shown:]],
            inner_steps=len(inner.steps), initial_val_score=inner.initial_val_score,
        )
        self.emit({"type": "candidate_evaluated", **entry.summary(), "objective": self.objective(entry),
                   "blame": blame, "inner_stopped": inner.stopped,
                   "workflow": json.loads(inner.workflow.model_dump_json())})
        best = archive.best(self.objective) if archive.entries else None
        if best is None or self.objective(entry) > self.objective(best):
            self.emit({"type": "candidate_accepted", "id": entry.id, "val_score": entry.val_score,
                       "objective": self.objective(entry)})
        return entry

    # -- proposals ---------------------------------------------------------------------------
    def _edit_prompt(self, parent: ArchiveEntry) -> list[dict[str, str]]:
        blame = ", ".join(f"{n} ({c})" for n, c in sorted(parent.blame.items(), key=lambda x: -x[1])) or "none recorded"
        tried = "\n".join(f"- {t} → {'score %.3f' % s if s is not None else 'rejected'}" for t, s in parent.tried) or "none"
        cost = f"${parent.cost_per_example:.5f}" if parent.cost_per_example else f"{parent.tokens_per_example:.0f} tokens"
        user = P.EDIT_USER.format(
            task_description=self.task_description, score=parent.val_score, cost=cost,
            workflow_text=to_text(parent.workflow), blame=blame,
            failures="\n".join(f"- {f}" for f in parent.failures) or "none recorded",
            tried=tried, tools=", ".join(f"{n}({', '.join(a)})" for n, a in self.tools.items()) or "none",
            vocabulary=P.EDIT_VOCABULARY,
        )
        return [{"role": "system", "content": P.EDIT_SYSTEM}, {"role": "user", "content": user}]

    async def _propose(self, archive: Archive, parent: ArchiveEntry) -> tuple[Any, Workflow] | None:
        for attempt in range(self.cfg.proposal_attempts):
            messages = self._edit_prompt(parent)
            sampling = retry_sampling(attempt, self.cfg.retry_temperature, len(parent.tried))
            reply = (await self.opt.complete(messages, max_tokens=self.cfg.edit_max_tokens, **sampling)).text
            result = self._check(parent, reply)
            if isinstance(result, str):  # invalid: repair once
                messages = messages + [{"role": "assistant", "content": reply},
                                       {"role": "user", "content": P.EDIT_REPAIR.format(error=result)}]
                reply = (await self.opt.complete(messages, max_tokens=self.cfg.edit_max_tokens)).text
                first_error = result
                result = self._check(parent, reply)
                if isinstance(result, str):
                    self.emit({"type": "candidate_rejected", "parent": parent.id, "reason": "invalid",
                               "error": result, "first_error": first_error})
                    parent.tried.append((f"invalid proposal: {result[:80]}", None))
                    continue
                self.emit({"type": "edit_repaired", "parent": parent.id, "error": first_error})
            edit, child = result
            text = describe_edit(edit)
            duplicate = archive.seen(child)
            if duplicate is not None:
                parent.note_duplicate(text, archive.get(duplicate))
                self.emit({"type": "candidate_rejected", "parent": parent.id, "reason": "duplicate",
                           "edit": text, "same_as": duplicate})
                continue
            parent.tried.append((text, None))  # its score is filled in once it is evaluated
            self.emit({"type": "candidate_proposed", "parent": parent.id, "edit": text,
                       "rationale": edit.rationale, "attempt": attempt + 1})
            return edit, child
        return None

    def _check(self, parent: ArchiveEntry, reply: str) -> tuple[Any, Workflow] | str:
        """(edit, child workflow) or an error message for the repair prompt."""
        try:
            data = extract_json(reply)
        except ValueError as exc:
            return f"no JSON edit found ({exc})"
        if isinstance(data, list) and data:
            data = data[0]
        if not isinstance(data, dict):
            return "the edit must be one JSON object"
        data.setdefault("rationale", _critique(reply))
        if data.get("op") not in EDIT_OPS:
            return f"unknown op {data.get('op')!r}; use one of {', '.join(EDIT_OPS)}"
        try:
            edit = parse_edit(data)
            child = apply_edit(parent.workflow, edit, known_tools=self.tools)
        except EditError as exc:
            return str(exc)
        if len(child.sketch.nodes) > self.cfg.max_nodes:
            return f"the workflow would have {len(child.sketch.nodes)} nodes; the limit is {self.cfg.max_nodes}"
        return edit, child


def _critique(reply: str) -> str:
    text = reply.split("```", 1)[0].strip()
    return text[:500]
