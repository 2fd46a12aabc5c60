"""Budgets priced in evaluations: prices, the exact test reserve, child and tuning caps, the
cache-only probe of the seed's test answers, and time budgets across resumed sessions."""

import json

import pytest

from flowbot.graph import LLMNode, MergeNode, NodeParams, OutputFormat, Sketch, Workflow
from flowbot.lm import Budget, LMClient
from flowbot.lm.base import Usage
from flowbot.lm.cache import ResponseCache
from flowbot.lm.client import CacheMiss
from flowbot.optim.budgeting import BudgetPlan, Price, projected_price, structure_calls
from flowbot.optim.driver import uncached_items
from flowbot.optim.events import CandidateEvaluated, SeedEvaluated, parse_event
from flowbot.optim.rundir import RunDir
from flowbot.runtime import Executor
from flowbot.testing import ScriptedLM


def one(extract="answer") -> Workflow:
    node = LLMNode(id="solve", reads=["q"], writes="a", output=OutputFormat(extract=extract))
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=[node]), params={"solve": NodeParams()})


def three_and_vote() -> Workflow:
    nodes = [LLMNode(id=f"s{i}", reads=["q"], writes=f"a{i}") for i in range(3)]
    nodes.append(MergeNode(id="vote", reads=["a0", "a1", "a2"], writes="a", strategy="majority"))
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={n.id: NodeParams() for n in nodes})


def test_structure_calls_and_projected_price():
    assert structure_calls(one()) == 1 and structure_calls(three_and_vote()) == 3
    react = one().with_params("solve", tools=["python"])
    assert structure_calls(react) == 2
    child = projected_price(one(), Price(1.0, 400.0, 0.001), three_and_vote())
    assert (child.calls, child.tokens, child.usd) == (3.0, 1200.0, pytest.approx(0.003))


def test_test_reserve_is_exact_and_follows_the_best():
    plan = BudgetPlan(Budget(max_calls=500), n_val=50, n_test=150, scope="all")
    # the seed's answers on 140 of the 150 test items are cached: only 10 are reserved
    assert plan.set_seed(Price(1.0, 500.0, 0.0), uncached_test_items=10).calls == 10
    assert plan.headroom()["calls"] == 490
    # a 3-call best: its 150 test items, plus the seed's 10 uncached ones for the comparison
    assert plan.reserve_test(Price(3.0, 1500.0, 0.0), best_is_seed=False).calls == 460
    assert plan.headroom()["calls"] == 40
    assert not plan.affords(plan.full_validation(Price(1.0, 500.0, 0.0)))
    search_only = BudgetPlan(Budget(max_calls=500), n_val=50, n_test=150, scope="search")
    assert search_only.set_seed(Price(1.0, 500.0, 0.0), uncached_test_items=150).calls == 0


def test_children_and_tuning_are_capped():
    budget = Budget(max_calls=300)
    plan = BudgetPlan(budget, n_val=40, n_test=0, seed_tuning_share=0.4, tuning_share=0.5, slack=1.25)
    plan.set_seed(Price(1.0, 100.0, 0.0), 0)
    child = plan.for_child("c1", Price(2.0, 200.0, 0.0))
    assert child.limits.max_calls == 2 * 40 * 1.25 + 2  # one raced validation with slack, plus the proposal
    assert plan.for_tuning("tune c0", seed=True).limits.max_calls == 120
    assert plan.candidates_afforded(Price(2.0, 200.0, 0.0)) == 300 // 82
    for _ in range(280):
        budget.start_call()
        budget.finish_call(Usage(1, 1))
    assert plan.for_child("c2", Price(2.0, 200.0, 0.0)).limits.max_calls == 20  # never past the headroom


async def test_uncached_items_probe_pays_nothing_and_counts_exactly():
    cache = ResponseCache()
    lm = ScriptedLM(default=lambda req, i: "Answer: 1")
    client = LMClient(lm, cache=cache)
    ex = Executor(client)
    items = [{"q": f"q{i}"} for i in range(6)]
    for item in items[:4]:
        await ex.run(one(), item)  # the seed's answers on 4 items are cached
    calls = len(lm.calls)
    assert await uncached_items(ex, one(), items) == 2
    assert len(lm.calls) == calls and client.meter.total().cached_calls == 0  # nothing paid or charged
    with pytest.raises(CacheMiss):
        await client.cache_only().complete([{"role": "user", "content": "not asked before"}])


async def test_cache_only_counts_this_runs_own_answers_as_missing():
    """On resume, the seed's test answers this run paid for earlier were not cached when it began:
    the reserve (and so every decision after it) must come out the same as in the first session."""
    cache = ResponseCache()
    lm = ScriptedLM(default=lambda req, i: "x")
    first = LMClient(lm, cache=cache, run_id="run-1")
    await first.complete([{"role": "user", "content": "hi"}])
    with pytest.raises(CacheMiss):
        await LMClient(lm, cache=cache, run_id="run-1").cache_only().complete([{"role": "user", "content": "hi"}])
    other = await LMClient(lm, cache=cache, run_id="run-2").cache_only().complete([{"role": "user", "content": "hi"}])
    assert other.text == "x"


def test_time_spent_in_earlier_sessions_is_kept(tmp_path):
    rd = RunDir(tmp_path)
    rd.events({"type": "run_started"})
    sessions = json.loads((tmp_path / "sessions.json").read_text())
    sessions[0]["start"] -= 100.0  # as if the first session had run for 100 s before it was killed
    (tmp_path / "sessions.json").write_text(json.dumps(sessions))
    rd.close()  # the first session is over (a killed one releases its lock with the process)
    again = RunDir(tmp_path)
    assert again.elapsed_before() == pytest.approx(100.0, abs=1.0)
    budget = Budget(max_seconds=120)
    budget.resume_time(again.elapsed_before())
    assert not budget.exhausted
    budget.resume_time(again.elapsed_before() + 30)
    assert budget.exhausted and "120 s" in budget.exhausted_reason()


def test_events_round_trip_and_unknown_ones_stay_dicts():
    e = SeedEvaluated(val_score=0.25, calls=4, tokens=100, cost_usd=None)
    assert parse_event(json.loads(json.dumps(e.to_dict()))) == e
    assert parse_event({"type": "something_new", "x": 1}) == {"type": "something_new", "x": 1}
    partial = parse_event({"type": "candidate_evaluated", "id": "c1"})
    assert isinstance(partial, dict)  # missing fields: left as the dict it was
    assert CandidateEvaluated.type == "candidate_evaluated"



def spend(budget: Budget, calls: int) -> None:
    for _ in range(calls):
        budget.start_call()
        budget.finish_call(Usage(1, 1))


def test_a_candidate_is_raced_only_when_its_test_would_fit_too():
    """A winner grows the test reserve to its own test evaluation: a three-call child of a one-call
    seed whose test answers are cached needs 3 × 60 test calls once it wins, not only 62 to race."""
    budget = Budget(max_calls=150)
    plan = BudgetPlan(budget, n_val=20, n_test=60)
    plan.set_seed(Price(1.0, 0.0, 0.0), uncached_test_items=0)
    spend(budget, 20)  # the seed's validation
    child = Price(3.0, 0.0, 0.0)
    assert plan.affords(plan.full_validation(child))  # its validation alone fits, but...
    assert plan.race_and_test(child).calls == 3 * 20 + 2 + 3 * 60
    assert not plan.affords_candidate(child) and plan.candidates_afforded(child) == 0
    assert plan.affords_candidate(Price(1.0, 0.0, 0.0)) and plan.candidates_afforded(Price(1.0, 0.0, 0.0)) == (130 - 60) // 22


@pytest.mark.parametrize("calls", [1.0, 1.5, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("uncached", [0, 30, 60])
def test_whatever_wins_its_test_stays_paid_for(calls, uncached):
    """The invariant: race a candidate the plan affords, let it win, reserve its test: the headroom
    never goes negative (so the final test evaluation is complete)."""
    for limit in range(100, 700, 25):
        budget = Budget(max_calls=limit, max_tokens=400 * limit)
        plan = BudgetPlan(budget, n_val=20, n_test=60)
        plan.set_seed(Price(1.0, 400.0, 0.0), uncached_test_items=uncached)
        spend(budget, 20)
        child = Price(calls, 400.0 * calls, 0.0)
        if not plan.affords_candidate(child):
            continue
        spend(budget, int(child.calls * 20) + 2)  # its full raced validation and the proposal
        plan.reserve_test(child, best_is_seed=False)
        assert all(room >= 0 for room in plan.headroom().values()), (limit, plan.headroom())


def test_a_winner_that_cost_more_than_projected_is_not_kept_when_its_test_cannot_be_paid():
    from flowbot.optim.racing import RaceResult
    from flowbot.runtime.batch import BatchResult, ExampleResult

    def scored(calls: int) -> BatchResult:  # 20 items, ``calls`` in all
        return BatchResult([ExampleResult(f"e{i}", {}, {}, 1.0) for i in range(20)], 20, calls=calls)

    budget = Budget(max_calls=150)
    plan = BudgetPlan(budget, n_val=20, n_test=60)
    plan.set_seed(Price(1.0, 0.0, 0.0), uncached_test_items=0)
    spend(budget, 20 + 62)
    won = RaceResult(True, "5 wins, 0 losses", 5, 0, 15, 20, 20, 0.03, scored(60))
    plan.check_winner(won)  # measured at three calls an example: 180 test calls do not fit in 68
    assert not won.accepted and "test evaluation does not fit" in won.reason
    cheap = RaceResult(True, "5 wins, 0 losses", 5, 0, 15, 20, 20, 0.03, scored(20))
    plan.check_winner(cheap)
    assert cheap.accepted


# -- what a race pays when the cache answers the parent's unchanged nodes ---------------------------
def two_steps() -> Workflow:
    nodes = [LLMNode(id="solve", reads=["q"], writes="draft"), LLMNode(id="fmt", reads=["q", "draft"], writes="a")]
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["a"], nodes=nodes),
                    params={"solve": NodeParams(instruction="think"), "fmt": NodeParams(instruction="shorten")})


def test_a_change_downstream_leaves_the_upstream_node_to_the_cache():
    from flowbot.optim.budgeting import cached_nodes, race_price
    wf, price = two_steps(), Price(2.0, 1000.0, 0.0)
    last = wf.with_params("fmt", instruction="shorten; digits only")
    assert cached_nodes(wf, last) == {"solve"} and race_price(wf, price, last) == Price(1.0, 500.0, 0.0)
    first = wf.with_params("solve", instruction="think twice")  # its answers feed fmt: both re-run
    assert cached_nodes(wf, first) == set() and race_price(wf, price, first) == price
    assert cached_nodes(wf, wf) == {"solve", "fmt"}  # nothing to pay (a duplicate is never raced)


def test_a_structural_child_pays_only_its_new_nodes():
    from flowbot.optim.budgeting import cached_nodes, race_price
    from flowbot.optim.operators import OperatorContext, apply_operator
    from flowbot.tasks.seeds import build_baseline
    cot = build_baseline("cot", inputs=["passage", "question"], output="answer", extract="answer")
    ctx = OperatorContext(tools={"python": ["code", "stdin"]})
    fmt = apply_operator(cot, "format_answer", "solve", ctx)  # solve now writes draft_answer, same prompt
    assert cached_nodes(cot, fmt) == {"solve"} and race_price(cot, Price(1.0, 600.0, 0.0), fmt).calls == 1.0
    assert projected_price(cot, Price(1.0, 600.0, 0.0), fmt).calls == 2.0  # what its test will cost
    sc = apply_operator(cot, "self_consistency", "solve", ctx)  # new copies with new prompts: all paid
    assert race_price(cot, Price(1.0, 600.0, 0.0), sc).calls == structure_calls(sc) == 3.0


def test_a_child_cheap_to_race_fits_where_its_full_price_would_not():
    plan = BudgetPlan(Budget(max_calls=70), n_val=50, n_test=0, scope="search")
    full, raced = Price(2.0, 0.0, 0.0), Price(1.0, 0.0, 0.0)
    assert not plan.affords_candidate(full) and plan.affords_candidate(full, raced_at=raced)
    assert plan.for_child("c1", full, raced).limits.max_calls == 64  # 50 × 1.25 + the 2-call proposal
