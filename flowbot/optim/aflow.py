"""An AFlow-style baseline on the same IR: Monte-Carlo tree search over workflows built from AFlow's
kinds of operators (generate, review and revise, ensemble with selection, programmer with code
execution, format), structure only — prompts are the operators' fixed defaults, no inner loop.

Selection follows AFlow: among the top-k workflows by score, sample a parent with a softmax over
scores mixed with a uniform distribution (λ); expansion asks the optimizer for one operator
modification given the parent's failures and the *experience* of modifications already tried from
it; evaluation scores the child on validation; the experience is written back to the parent.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

from flowbot.graph.edits import (
    AddNode,
    AddToolStep,
    EditError,
    Ensemble,
    InsertAfter,
    InsertVerifier,
    RemoveNode,
    apply_edit,
    describe_edit,
    fresh_name,
)
from flowbot.graph.nodes import LLMNode, NodeParams, OutputFormat
from flowbot.graph.render import to_text
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded
from flowbot.lm.budget import Budget
from flowbot.lm.client import LMClient
from flowbot.optim import prompts as P
from flowbot.optim.archive import Archive, ArchiveEntry, Objective
from flowbot.optim.evaluation import Evaluator, EventSink
from flowbot.optim.outer import OuterResult
from flowbot.optim.policies import retry_sampling
from flowbot.optim.textgrad import clip
from flowbot.runtime.extract import extract_json

REVIEW_REVISE = ("Review the draft answer for mistakes in reasoning, calculation or format. If you find "
                 "any, fix them; then give the final, corrected answer.")
PROGRAMMER = "Write a short Python program that computes the answer and prints it. Only print the result."
FORMAT = "Rewrite the answer into the exact format the task requires, without changing its content."
GENERATE = "Think through the problem and write down the key facts and intermediate results that lead to the answer."
OPERATORS = ("review_revise", "ensemble", "programmer", "format", "generate", "remove")


@dataclass
class AFlowConfig:
    rounds: int = 6
    top_k: int = 3
    uniform_mix: float = 0.2  # λ: share of uniform probability in parent selection
    alpha: float = 0.4  # softmax sharpness over scores
    patience: int = 3
    seed: int = 0
    max_nodes: int = 12
    failures_shown: int = 3
    proposal_attempts: int = 3  # an invalid or duplicate modification is retried, sampled
    retry_temperature: float = 0.8


def operator_edit(workflow: Workflow, op: dict[str, Any]) -> Any:
    """The IR edit for one AFlow operator modification (raises EditError when it does not apply)."""
    name = op.get("operator")
    target_id = op.get("target")
    if name not in OPERATORS:
        raise EditError(f"unknown operator {name!r}; use one of {', '.join(OPERATORS)}")
    try:
        target = workflow.sketch.node(str(target_id))
    except KeyError:
        raise EditError(f"unknown target node {target_id!r}") from None
    if name == "review_revise":
        return InsertVerifier(target=target.id, instruction=REVIEW_REVISE)
    if name == "ensemble":
        strategy = op.get("strategy", "select")
        return Ensemble(node_id=target.id, k=int(op.get("k", 3)),
                        strategy=strategy if strategy in ("select", "majority") else "select")
    if name == "programmer":
        return AddToolStep(tool="python", consumer=target.id, producer_reads=list(target.reads),
                           producer_instruction=PROGRAMMER)
    if name == "remove":
        return RemoveNode(node_id=target.id)
    taken = set(workflow.sketch.node_ids()) | set(workflow.sketch.fields())
    if name == "format":
        node_id, field = fresh_name(f"format_{target.id}", taken), fresh_name(f"{target.writes}_formatted", taken)
        output = target.output if isinstance(target, LLMNode) else OutputFormat()
        node = LLMNode(id=node_id, reads=[f for f in target.reads if f != target.writes] + [target.writes],
                       writes=field, output=output, purpose="formats the answer")
        return InsertAfter(target=target.id, node=node, params=NodeParams(instruction=FORMAT))
    node_id, field = fresh_name(f"generate_for_{target.id}", taken), fresh_name(f"{target.id}_notes", taken)
    node = LLMNode(id=node_id, reads=list(target.reads), writes=field, purpose="writes notes for the next step")
    return AddNode(node=node, params=NodeParams(instruction=GENERATE), consumers=[target.id])


class AFlowSearch:
    def __init__(
        self,
        evaluator: Evaluator,
        optimizer: LMClient,
        *,
        task_description: str,
        tools: dict[str, list[str]],
        config: AFlowConfig | None = None,
        budget: Budget | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.evaluate = evaluator
        self.opt = optimizer
        self.task_description = task_description
        self.tools = tools
        self.cfg = config or AFlowConfig()
        self.budget = budget
        self.emit = on_event or (lambda e: None)
        self.rng = random.Random(self.cfg.seed)
        self.objective = Objective("score")

    def select_parent(self, archive: Archive) -> ArchiveEntry:
        top = sorted(archive.entries, key=lambda e: -e.val_score)[: self.cfg.top_k]
        best = top[0].val_score
        weights = [math.exp(self.cfg.alpha * 10 * (e.val_score - best)) for e in top]
        z = sum(weights)
        probs = [self.cfg.uniform_mix / len(top) + (1 - self.cfg.uniform_mix) * w / z for w in weights]
        return self.rng.choices(top, weights=probs, k=1)[0]

    async def search(self, seed: Workflow, val: list[dict[str, Any]]) -> OuterResult:
        archive = Archive()
        stopped: str | None = None
        rounds = 0
        try:
            archive.add(await self._score(archive, seed, None, "seed", val))
            no_gain = 0
            for rounds in range(1, self.cfg.rounds + 1):
                best_before = archive.best(self.objective).val_score
                parent = self.select_parent(archive)
                parent.expansions += 1
                child = await self._expand(archive, parent)
                if child is not None:
                    edit, wf = child
                    entry = await self._score(archive, wf, parent, describe_edit(edit), val, edit)
                    archive.add(entry)
                    parent.tried[-1] = (parent.tried[-1][0], entry.val_score)
                no_gain = 0 if archive.best(self.objective).val_score > best_before + 1e-12 else no_gain + 1
                if no_gain >= self.cfg.patience:
                    break
        except BudgetExceeded as exc:
            stopped = str(exc)
        if not archive.entries:
            raise BudgetExceeded(stopped or "the budget ran out before the seed workflow was scored")
        return OuterResult(archive, archive.best(self.objective), stopped, rounds)

    async def _score(self, archive: Archive, wf: Workflow, parent: ArchiveEntry | None, edit_text: str,
                     val: list[dict[str, Any]], edit: Any = None) -> ArchiveEntry:
        res = await self.evaluate(wf, val, f"[aflow c{len(archive.entries)}] validating")
        failures = [f"inputs {clip({k: r.example.get(k) for k in wf.sketch.inputs}, 300)} | output "
                    f"{clip(r.prediction, 120)} | score {r.score:.2f}" for r in res.results if r.score < 1.0]
        entry = ArchiveEntry(id=f"c{len(archive.entries)}", workflow=wf, val_score=res.score,
                             cost_per_example=res.cost_per_example(), tokens_per_example=res.tokens_per_example(),
                             parent=parent.id if parent else None, edit_text=edit_text,
                             edit=edit.model_dump(mode="json") if edit is not None else None,
                             failures=failures[: self.cfg.failures_shown])
        self.emit({"type": "candidate_evaluated", "method": "aflow", **entry.summary(),
                   "objective": self.objective(entry), "workflow": json.loads(wf.model_dump_json())})
        if not archive.entries or entry.val_score > archive.best(self.objective).val_score:
            self.emit({"type": "candidate_accepted", "method": "aflow", "id": entry.id,
                       "val_score": entry.val_score, "objective": self.objective(entry)})
        return entry

    async def _expand(self, archive: Archive, parent: ArchiveEntry) -> tuple[Any, Workflow] | None:
        for attempt in range(self.cfg.proposal_attempts):
            result = await self._modification(archive, parent, attempt)
            if result is not None:
                return result
        return None

    async def _modification(self, archive: Archive, parent: ArchiveEntry, attempt: int) -> tuple[Any, Workflow] | None:
        experience = "\n".join(
            f"- {t}: {'score %.3f (%+.3f)' % (s, s - parent.val_score) if s is not None else 'failed'}"
            for t, s in parent.tried) or "none yet"
        user = P.AFLOW_USER.format(task_description=self.task_description, score=parent.val_score,
                                   workflow_text=to_text(parent.workflow), experience=experience,
                                   failures="\n".join(f"- {f}" for f in parent.failures) or "none",
                                   vocabulary=P.AFLOW_VOCABULARY)
        sampling = retry_sampling(attempt, self.cfg.retry_temperature, len(parent.tried))
        reply = await self.opt.complete([{"role": "system", "content": P.AFLOW_SYSTEM},
                                         {"role": "user", "content": user}], max_tokens=400, **sampling)
        try:
            op = extract_json(reply.text)
            if isinstance(op, list) and op:
                op = op[0]
            if not isinstance(op, dict):
                raise EditError("the modification must be a JSON object")
            edit = operator_edit(parent.workflow, op)
            child = apply_edit(parent.workflow, edit, known_tools=self.tools)
        except (ValueError, EditError) as exc:
            parent.tried.append((f"invalid modification: {str(exc)[:80]}", None))
            self.emit({"type": "candidate_rejected", "method": "aflow", "parent": parent.id, "error": str(exc)})
            return None
        text = describe_edit(edit)
        duplicate = archive.seen(child)
        if duplicate is not None or len(child.sketch.nodes) > self.cfg.max_nodes:
            if duplicate is not None:
                parent.note_duplicate(text, archive.get(duplicate))
            else:
                parent.tried.append((f"{text} (too large)", None))
            self.emit({"type": "candidate_rejected", "method": "aflow", "parent": parent.id, "edit": text,
                       "reason": "duplicate" if duplicate is not None else "too large"})
            return None
        parent.tried.append((text, None))  # its score is filled in once it is evaluated
        self.emit({"type": "candidate_proposed", "method": "aflow", "parent": parent.id, "edit": text})
        return edit, child
