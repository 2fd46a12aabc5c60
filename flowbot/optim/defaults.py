"""The defaults of every optimizer setting that both the command line and the Python API expose,
defined once: the settings classes (:class:`~flowbot.optim.inner.InnerConfig`, ...) and
:func:`flowbot.optimize` take their defaults from here, and ``flowbot optimize`` passes only the
options it was given (so the same run lands in the same run directory from either) and shows these
values in its help. It imports nothing, so the command line can read it without loading the optimizer.

    >>> INNER_STEPS, OUTER_ROUNDS, AFLOW_ROUNDS
    (5, 4, 4)
"""

from typing import Final

SEED_WORKFLOW: Final = "cot"  # io, cot, sc, react or a workflow file
METHOD: Final = "flowbot"  # flowbot, inner-only or aflow
OBJECTIVE: Final = "score"  # score, or cost (score minus COST_WEIGHT x cost per example)
COST_WEIGHT: Final = 0.05
BUDGET_SCOPE: Final = "all"  # all (the test evaluation is reserved from the budget) or search

TRAIN_SIZE: Final = 40
VAL_SIZE: Final = 20
CONCURRENCY: Final = 4
RANDOM_SEED: Final = 0

INNER_STEPS: Final = 5  # minibatches per tuned workflow
MINIBATCH_SIZE: Final = 5
CANDIDATES: Final = 1  # instruction rewrites proposed per node and step
DEMOS: Final = 2  # few-shot demos to try per node (0 = off)
DEMO_SETS: Final = 1  # demo sets raced per node and tuning (1: once, for a node that has none yet)
DEMO_BOOTSTRAP: Final = 0  # training examples a tuning may run to fill a demo set (0: only minibatch successes)
DEMO_TEACHER: Final = "task"  # which model's solved traces become demos: the task model's own, or the optimizer's
FEEDBACK: Final = "backward"  # backward (layer by layer) or global (ablation)
STEP: Final = "rewrite"  # rewrite (a blamed node's instruction whole) or rule (add one general rule to it)
SPECIFICITY_GUARD: Final = True  # drop a change naming things of the minibatch's examples before paying for it

OUTER_ROUNDS: Final = 4  # structural candidates raced (budget permitting)
SCHEDULE: Final = "tune-first"  # or alternate
PROPOSAL: Final = "llm"  # or fixed
AFLOW_ROUNDS: Final = 4

MARGIN: Final = 2  # racing: wins minus losses a candidate needs against the incumbent
ALPHA: Final = 0.15  # racing: one-sided sign-test level
