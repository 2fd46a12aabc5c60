"""An AFlow-style baseline on the same IR: a tree search over workflows built from the same operator
library as FlowBot (:mod:`flowbot.optim.operators`), structure only — every node keeps the
operators' default prompts, there is no inner loop.

It runs the same search skeleton, racing rule and budget plan as FlowBot's outer loop, so the two
differ only where AFlow does: parent selection samples among the top-k workflows with a softmax over
scores mixed with a uniform distribution (λ), and expansion asks the optimizer for one operator
modification given the parent's failures and the *experience* of modifications already tried from
it (decoded under the same proposal schema).

    >>> AFlowConfig().top_k
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flowbot.lm.budget import Budget
from flowbot.lm.client import LMClient
from flowbot.optim import defaults as D
from flowbot.optim.budgeting import BudgetPlan
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.events import EventSink
from flowbot.optim.operators import OperatorContext
from flowbot.optim.policies import SoftmaxTopK
from flowbot.optim.proposal import LLMProposal
from flowbot.optim.racing import Acceptance
from flowbot.optim.search import SearchConfig, StructureSearch


@dataclass
class AFlowConfig:
    rounds: int = D.AFLOW_ROUNDS
    top_k: int = 3
    uniform_mix: float = 0.2  # λ: share of uniform probability in parent selection
    alpha: float = 0.4  # softmax sharpness over scores
    patience: int | None = None
    seed: int = D.RANDOM_SEED
    max_nodes: int = 12
    failures_shown: int = 3
    proposal_attempts: int = 3  # an unusable reply is retried, sampled with a fresh seed
    retry_temperature: float = 0.8
    edit_max_tokens: int = 200


def aflow_search(*, evaluator_for: Callable[[Budget], Evaluator], optimizer: LMClient, ctx: OperatorContext,
                 task_description: str, config: AFlowConfig, racing: Acceptance, plan: BudgetPlan,
                 on_event: EventSink | None = None, targets: tuple[str, ...] = ()) -> StructureSearch:
    expander = LLMProposal(optimizer, ctx, task_description=task_description, style="aflow",
                           attempts=config.proposal_attempts, retry_temperature=config.retry_temperature,
                           max_nodes=config.max_nodes, max_tokens=config.edit_max_tokens, on_event=on_event)
    selection = SoftmaxTopK(config.top_k, config.alpha, config.uniform_mix, config.seed)
    search_cfg = SearchConfig(rounds=config.rounds, patience=config.patience, max_nodes=config.max_nodes,
                              failures_shown=config.failures_shown, targets=list(targets))
    return StructureSearch(evaluator_for=evaluator_for, expander=expander, selection=selection, racing=racing,
                           plan=plan, config=search_cfg, tuner=None, on_event=on_event)
