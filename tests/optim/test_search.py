"""The shared structure-search skeleton with a scripted expander: races, acceptance, tuning of
winners only, budget pricing, and what the run records."""


from flowbot.graph import LLMNode, NodeParams, OutputFormat, Sketch, Workflow
from flowbot.lm import Budget, LMClient, LMRequest, UsageMeter
from flowbot.optim.archive import ArchiveEntry
from flowbot.optim.budgeting import BudgetPlan, Price
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.policies import UCBSelection
from flowbot.optim.racing import PairedRacing
from flowbot.optim.search import Proposed, SearchConfig, StructureSearch, Tuned
from flowbot.runtime import Executor
from flowbot.testing import ScriptedLM


def wf(instruction: str, copies: int = 1) -> Workflow:
    """A 'structure' per instruction (its node is named after it), with ``copies`` llm nodes."""
    nodes = [LLMNode(id=f"{instruction}{i}" if i else instruction, reads=["q"], writes="answer" if not i else f"alt{i}",
                     output=OutputFormat(extract="answer")) for i in range(copies)]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["answer"], nodes=nodes),
                    params={n.id: NodeParams(instruction=instruction) for n in nodes})


def data(n):
    return [{"id": f"e{i}", "q": f"q{i}", "gold": str(i)} for i in range(n)]


def exact(example, prediction):
    return float(prediction.get("answer") == example["gold"])


RIGHT = {"seed": set(range(0, 12)), "better": set(range(0, 20)), "worse": set(range(0, 6)), "worse2": set(range(0, 6)),
         "tuned": set(range(20)), "one_more": set(range(0, 13))}


def task_lm():
    def reply(req: LMRequest, i: int) -> str:
        instruction, user = req.messages[0][1].split("\n")[0], req.messages[-1][1]
        k = int(user.split("q")[-1])
        return f"Answer: {k if k in RIGHT[instruction] else 'no'}"
    return ScriptedLM(default=reply)


class Script:
    """An expander that proposes the given instructions (as one-node 'structures'), in order."""

    method = "scripted"

    def __init__(self, names, copies=1):
        self.names, self.copies = list(names), copies

    async def propose(self, parent, archive, budget, counts, fits=None):
        if not self.names:
            return None
        child = wf(self.names[0], self.copies)
        if fits is not None and not fits(child):
            return None  # a constrained proposer is never offered what the budget cannot pay for
        name = self.names.pop(0)
        counts.made += 1
        counts.valid += 1
        if archive.seen(child):
            counts.duplicate += 1
            return None
        return Proposed({"op": name}, f"use {name}", "because", child)


async def run(names, budget=None, tuner=None, copies=1, n_val=20, rounds=4, schedule="tune-first", n_test=0,
              racing=None, final_tuning=True):
    events = []
    meter = UsageMeter()
    lm = task_lm()
    client = LMClient(lm, meter=meter, budget=budget)
    ev = Evaluator(Executor(client), exact, concurrency=1)
    val = data(n_val)
    seed_val = await ev(wf("seed"), val)
    plan = BudgetPlan(budget or Budget(), n_val=n_val, n_test=n_test)
    plan.set_seed(Price.of(seed_val), 0)  # the seed's test answers are cached
    search = StructureSearch(
        evaluator_for=lambda b: ev.with_executor(Executor(client.with_budget(b))), expander=Script(names, copies),
        selection=UCBSelection(0.3), racing=racing or PairedRacing(chunk=1), plan=plan,
        config=SearchConfig(rounds=rounds, schedule=schedule, final_tuning=final_tuning), tuner=tuner,
        on_event=events.append)
    result = await search.search(wf("seed"), seed_val, val)
    result.plan = plan
    return result, events, lm


async def test_a_clear_win_becomes_the_incumbent_and_a_loser_is_raced_out():
    result, events, lm = await run(["worse", "better"])
    assert result.best.workflow.params["better"].instruction == "better"
    worse = result.archive.entries[1]
    assert not worse.complete and not worse.accepted and worse.race["stopped_early"]
    assert result.racing.to_dict()["stopped_early"] == 1 and result.racing.calls_saved > 0
    accepted = [e for e in events if e.type == "candidate_accepted"]
    assert [e.id for e in accepted] == ["c0", "c2"]
    assert result.proposals.applied == 2


async def test_another_acceptance_policy_decides_the_search(strict_gain):
    # one more item right (1 win, 0 losses): below paired racing's margin, a strict gain for the other
    result, _, _ = await run(["one_more"])
    assert result.best.id == "c0"
    result, events, _ = await run(["one_more"], racing=strict_gain)
    assert strict_gain.decisions == [(1, 0, True)] and result.best.id == "c1"
    assert [e.reason for e in events if e.type == "candidate_accepted"][-1] == "a strict gain"


async def test_only_structures_that_win_are_tuned():
    tuned_ids = []

    async def tuner(entry: ArchiveEntry, budget: Budget, label: str, steps=None) -> Tuned:
        tuned_ids.append(entry.id)
        return Tuned(entry.workflow, entry.val, 0, entry.val_score)

    await run(["worse", "better"], tuner=tuner, final_tuning=False)
    assert tuned_ids == ["c0", "c2"]  # the seed, then the one structure that won its race


async def test_the_budget_left_after_the_rounds_tunes_the_incumbent():
    calls = []

    async def tuner(entry: ArchiveEntry, budget: Budget, label: str, steps=None) -> Tuned:
        calls.append((entry.id, steps, budget.limits.max_calls))
        return Tuned(entry.workflow, entry.val, 0, entry.val_score)

    result, _, _ = await run(["worse", "better"], budget=Budget(max_calls=400), tuner=tuner, rounds=2)
    assert [c[:2] for c in calls] == [("c0", None), ("c2", None), ("c2", None)]
    # the last tuning gets all the headroom there is (the tuner here spends none of it)
    assert calls[-1][2] == 400 - result.plan.budget.spent.calls


async def test_the_alternate_schedule_tunes_the_incumbent_after_each_structural_step():
    calls = []

    async def tuner(entry: ArchiveEntry, budget: Budget, label: str, steps=None) -> Tuned:
        calls.append((entry.id, steps))
        return Tuned(entry.workflow, entry.val, 0, entry.val_score)

    await run(["worse", "better", "worse2"], tuner=tuner, schedule="alternate")
    # no tuning before the first structural step; then one inner step on whichever is the incumbent,
    # and, the rounds done, the incumbent again with the budget left (and the inner loop's own steps)
    assert calls == [("c0", 1), ("c2", 1), ("c2", 1), ("c2", None)]


async def test_a_child_the_budget_cannot_pay_for_is_never_offered_or_raced():
    # the seed takes 20 calls; a three-call child needs 3 × 20 calls: more than the 40 left
    budget = Budget(max_calls=60)
    result, events, lm = await run(["better"], budget=budget, copies=3)
    assert result.proposals.made == 0 and result.archive.entries[0].exhausted
    assert result.stopped == "no new candidate the budget can pay for"
    assert result.best.id == "c0" and len(lm.calls) == 20 and budget.spent.calls == 20


async def test_a_child_whose_test_would_not_fit_once_it_won_is_never_offered():
    # 20 calls score the seed; a three-call child races for 62 of the 130 left, but once it won,
    # its 60 test items would take 180: it is not offered. A one-call child (20 + 60) still is.
    budget = Budget(max_calls=150)
    result, _, lm = await run(["better"], budget=budget, copies=3, n_test=60)
    assert result.proposals.made == 0 and result.best.id == "c0" and len(lm.calls) == 20
    budget = Budget(max_calls=150)
    result, _, _ = await run(["better"], budget=budget, copies=1, n_test=60)
    assert result.best.workflow.params["better"].instruction == "better"
    assert result.plan.reserved.calls == 60 and result.plan.headroom()["calls"] >= 0


async def test_rounds_count_raced_candidates_not_fruitless_proposals():
    class Flaky(Script):
        """Fails to propose every other time (as an optimizer whose reply is unusable would)."""
        calls = 0

        async def propose(self, parent, archive, budget, counts, fits=None):
            self.calls += 1
            if self.calls % 2:
                counts.made += 1
                counts.invalid += 1
                return None
            return await super().propose(parent, archive, budget, counts, fits)

    events = []
    meter = UsageMeter()
    client = LMClient(task_lm(), meter=meter)
    ev = Evaluator(Executor(client), exact, concurrency=1)
    val = data(20)
    seed_val = await ev(wf("seed"), val)
    plan = BudgetPlan(Budget(), n_val=20, n_test=0)
    plan.set_seed(Price.of(seed_val), 0)
    search = StructureSearch(evaluator_for=lambda b: ev, expander=Flaky(["worse", "better"]),
                             selection=UCBSelection(0.3), racing=PairedRacing(chunk=1), plan=plan,
                             config=SearchConfig(rounds=2), on_event=events.append)
    result = await search.search(wf("seed"), seed_val, val)
    assert result.rounds == 2 and result.proposals.applied == 2 and result.proposals.invalid == 2
    assert result.best.workflow.params["better"].instruction == "better"


async def test_search_stops_when_no_candidate_is_affordable():
    budget = Budget(max_calls=30)
    result, events, _ = await run(["better", "worse"], budget=budget)
    assert result.rounds == 0 and "cannot pay" in result.stopped
    assert result.best.id == "c0"
