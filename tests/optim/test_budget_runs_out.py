"""A budget that runs out at an awkward moment — in the middle of a node (a ReAct step), in the
middle of an ensemble, between a rewrite's minibatch check and its validation, during the backward
pass — ends the run cleanly, and the best it returns is the last workflow that won a full race.

The task needs two fixes (tests/optim/shout.py): the optimizer's first rewrite (CAPS) wins the seed's
first inner step; its second (SHOUT) would win the next. A time budget on a fake clock runs out at
the chosen request: the next paid call is refused."""

from __future__ import annotations

import json

import pytest

from flowbot.graph import load_workflow
from flowbot.lm import Budget, LMRequest
from flowbot.tasks.seeds import build_baseline
from flowbot.testing import instructed, optimizer_prompt

from .scripted_runs import prepare
from .shout import CAPS, LIMIT, SHOUT, Clocked, nth, optimizer_lm, shout_task, task_lm

def backward_of_caps(request: LMRequest) -> bool:
    return optimizer_prompt("backward")(request) and CAPS in request.messages[-1][1]


def sampled(request: LMRequest) -> bool:  # a self-consistency copy's sample (the greedy one is cached)
    return request.temperature > 0


#: seed, inner steps, the request after which the budget is gone, and what that leaves undone
CASES = {
    # step 2 asks for the backward pass of CAPS's failures: the second such call is refused
    "during the backward pass": ("cot", 2, nth(1, backward_of_caps),
                                 lambda task, opt: sum(map(backward_of_caps, opt)) == 1),
    # SHOUT passed its minibatch check (5 items); the first call of its race is refused
    "between the minibatch check and validation": ("cot", 2, nth(5, instructed(SHOUT)),
                                                   lambda task, opt: sum(map(instructed(SHOUT), task)) == 5),
    # a ReAct node: SHOUT's race acts (calls the tool) on its first item, then may not answer
    "in the middle of a node": ("react", 2, nth(11, instructed(SHOUT)),
                                lambda task, opt: sum(map(instructed(SHOUT), task)) == 11
                                and not [r for r in task if instructed(SHOUT)(r)][-1].messages[-1][1].startswith(
                                    "Observation:")),
    # the seed tuned to CAPS, its self-consistency child raced: the first item's samples are paid,
    # the second item's greedy sample comes from the cache and its sampled ones are refused
    "in the middle of an ensemble": ("cot", 1, nth(1, sampled),
                                     lambda task, opt: sum(map(sampled, task)) == 2),
}


def seed_workflow(kind: str):
    wf = build_baseline("cot", inputs=["question"], output="answer", description="repeat the question, shouting")
    return wf.with_params("solve", tools=["calculator"]) if kind == "react" else wf


@pytest.mark.parametrize("case", list(CASES))
async def test_the_budget_runs_out_and_the_best_is_the_last_workflow_that_won_a_full_race(tmp_path, case):
    kind, steps, when, interrupted_there = CASES[case]
    now, seen = [0.0], []
    task, opt = Clocked(task_lm(), when, now, seen), Clocked(optimizer_lm(), when, now, seen)
    events = []
    result = await prepare(tmp_path, task, opt, task=shout_task(), seed=seed_workflow(kind), train_size=10,
                           val_size=6, budget=Budget(max_seconds=LIMIT, clock=lambda: now[0]),
                           inner={"steps": steps, "demos": 0}, outer={"rounds": 1}).arun([events.append])
    assert now[0] > LIMIT, "the budget never ran out"
    assert interrupted_there(task.calls, opt.calls)
    assert result.stopped == f"run time budget of {LIMIT:g} s is used up"
    # the best is CAPS, the rewrite that won the seed's first inner step; what came after never
    # finished its race (SHOUT, or the self-consistency child), so it is nowhere
    assert [(e["new"], e["accepted"]) for e in events if e["type"] == "inner_candidate"] == [(CAPS, True)]
    assert not any(e["type"] == "candidate_evaluated" and e["id"] != "c0" for e in events)
    assert not (tmp_path / "run" / "workflows" / "c1.json").exists()
    assert result.best_id == "c0" and result.seed_val_score == 0.0 and result.val_score == 0.5
    assert result.best.params["solve"].instruction == CAPS
    assert result.best.sketch == seed_workflow(kind).sketch
    assert result.best.params["solve"].tools == (["calculator"] if kind == "react" else [])
    assert [(c["id"], c["val_score"]) for c in result.candidates] == [("c0", 0.5)]
    # the end is clean: the test evaluation is refused and says so, the summary and best.json are written
    assert result.test is None and [e["type"] for e in events[-2:]] == ["budget_warning", "run_finished"]
    assert events[-2]["message"] == f"test evaluation incomplete: run time budget of {LIMIT:g} s is used up"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"] == {"id": "c0", "val_score": 0.5, "path": "best.json"}
    assert summary["stopped"] == result.stopped
    saved = load_workflow(tmp_path / "run" / "best.json", known_tools={"calculator"})
    assert saved.params["solve"] == result.best.params["solve"] and saved.sketch == result.best.sketch
