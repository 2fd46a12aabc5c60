"""FlowBot's outer loop: the structure search (:mod:`flowbot.optim.search`) with FlowBot's expand
step — the optimizer critiques the parent's structure from its failures and the inner loop's blame
(the workflow-level gradient) and picks one edit, valid by construction, from the operator menu —
UCB parent selection, and the inner loop tuning every structure that wins its race.

``proposal="fixed"`` swaps the critique for a fixed prior order over the operator menu (an
ablation, reported as one).

    >>> OuterConfig().proposal
    'llm'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from flowbot.lm.budget import Budget
from flowbot.lm.client import LMClient
from flowbot.optim import defaults as D
from flowbot.optim.archive import Objective
from flowbot.optim.budgeting import BudgetPlan
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.events import EventSink
from flowbot.optim.operators import OperatorContext
from flowbot.optim.policies import UCBSelection
from flowbot.optim.proposal import FixedOrderProposal, LLMProposal
from flowbot.optim.racing import Acceptance
from flowbot.optim.search import SearchConfig, StructureSearch, Tuner


@dataclass
class OuterConfig:
    rounds: int = D.OUTER_ROUNDS  # structural candidates raced (budget permitting)
    patience: int | None = None  # rounds without an acceptance before stopping
    #: ``tune-first``: tune the seed, then each structure that wins; ``alternate`` (the paper's
    #: order): each round one structural step, then ``inner_steps_per_round`` inner steps on the incumbent
    schedule: Literal["tune-first", "alternate"] = D.SCHEDULE
    inner_steps_per_round: int = 1
    final_tuning: bool = True  # the budget left after the structural rounds tunes the incumbent
    proposal: Literal["llm", "fixed"] = D.PROPOSAL
    proposal_attempts: int = 3  # an unusable reply is retried, sampled with a fresh seed
    retry_temperature: float = 0.8
    exploration: float = 0.3
    failures_shown: int = 3
    max_nodes: int = 12
    edit_max_tokens: int = 200
    critique_chars: int = 240


def flowbot_search(*, evaluator_for: Callable[[Budget], Evaluator], optimizer: LMClient, ctx: OperatorContext,
                   task_description: str, config: OuterConfig, racing: Acceptance, plan: BudgetPlan,
                   tuner: Tuner | None, objective: Objective | None = None,
                   on_event: EventSink | None = None, targets: tuple[str, ...] = ()) -> StructureSearch:
    """The outer loop, wired: ``tuner`` is the inner loop bound to its budget (None: no tuning)."""
    expander: Any
    if config.proposal == "fixed":
        expander = FixedOrderProposal(ctx, max_nodes=config.max_nodes, on_event=on_event)
    else:
        expander = LLMProposal(optimizer, ctx, task_description=task_description, style="flowbot",
                               attempts=config.proposal_attempts, retry_temperature=config.retry_temperature,
                               max_nodes=config.max_nodes, max_tokens=config.edit_max_tokens,
                               critique_chars=config.critique_chars, on_event=on_event)
    search_cfg = SearchConfig(rounds=config.rounds, patience=config.patience, max_nodes=config.max_nodes,
                              schedule=config.schedule, inner_steps_per_round=config.inner_steps_per_round,
                              final_tuning=config.final_tuning,
                              failures_shown=config.failures_shown, targets=list(targets))
    return StructureSearch(evaluator_for=evaluator_for, expander=expander,
                           selection=UCBSelection(config.exploration), racing=racing, plan=plan, config=search_cfg,
                           objective=objective, tuner=tuner, on_event=on_event)
