"""Paired racing: the acceptance rule, the racing order, early stopping, and exact statistics."""

import math

import pytest

from flowbot.graph import LLMNode, NodeParams, OutputFormat, Sketch, Workflow
from flowbot.lm import LMClient, LMRequest
from flowbot.optim.evaluation import Evaluator, with_ids
from flowbot.optim.racing import PairedRacing, RaceLedger, race
from flowbot.optim.stats import count_pairs, p_value_sign, paired_difference
from flowbot.runtime import Executor
from flowbot.testing import ScriptedLM


def wf(instruction: str) -> Workflow:
    node = LLMNode(id="solve", reads=["q"], writes="answer", output=OutputFormat(extract="answer"))
    return Workflow(sketch=Sketch(inputs=["q"], outputs=["answer"], nodes=[node]),
                    params={"solve": NodeParams(instruction=instruction)})


def data(n: int) -> list[dict]:
    return [{"id": f"e{i}", "q": f"q{i}", "gold": str(i)} for i in range(n)]


def exact(example, prediction):
    return float(prediction.get("answer") == example["gold"])


def solver(right: dict[str, set[int]], words: dict[str, dict[int, int]] | None = None):
    """Instruction → the item numbers it answers right; the rest get a wrong answer. ``words``:
    instruction → item → words of reasoning before the answer (tokens it costs)."""
    def reply(req: LMRequest, i: int) -> str:
        instruction, user = req.messages[0][1].split("\n")[0], req.messages[-1][1]
        k = int(user.split("q")[-1])
        reasoning = "so " * (words or {}).get(instruction, {}).get(k, 0)
        return f"{reasoning}\nAnswer: {k if k in right[instruction] else 'wrong'}"
    return ScriptedLM(default=reply)


async def setup(right: dict[str, set[int]], n: int, concurrency: int = 1, words=None):
    lm = solver(right, words)
    ev = Evaluator(Executor(LMClient(lm)), exact, concurrency=concurrency)
    items = data(n)
    incumbent = await ev(wf("inc"), items)
    return lm, ev, items, incumbent


def test_rule_margin_significance_and_ties():
    rule = PairedRacing(margin=2, alpha=0.15)
    assert rule.passes(3, 0) and not rule.passes(2, 0)  # 2-0 has p = 0.25
    assert rule.passes(5, 1) and not rule.passes(6, 3)  # p = 0.109 vs 0.254
    assert rule.decide(0, 0, cheaper=False)[0] is False  # a tie is never enough...
    assert rule.decide(1, 1, cheaper=True)[0] is True  # ...unless the candidate is cheaper
    assert rule.decide(1, 2, cheaper=True)[0] is False
    # the exact bound: wins still possible decide whether racing goes on
    assert rule.can_still_accept(0, 1, 5, cheaper=False) and not rule.can_still_accept(0, 1, 4, cheaper=False)


def test_order_puts_the_incumbents_misses_first_and_is_seeded():
    from flowbot.runtime.batch import BatchResult, ExampleResult
    results = [ExampleResult(f"e{i}", {"id": f"e{i}"}, {}, float(i % 3 != 0)) for i in range(9)]
    inc = BatchResult(results=results, requested=9)
    items = [{"id": f"e{i}"} for i in range(9)]
    order = [e["id"] for e in PairedRacing(seed=1).order(inc, items)]
    assert set(order[:3]) == {"e0", "e3", "e6"}  # the incumbent's misses: the only possible wins
    assert order == [e["id"] for e in PairedRacing(seed=1).order(inc, items)]
    assert order != [e["id"] for e in PairedRacing(seed=2).order(inc, items)]


async def test_hopeless_candidate_stops_early_and_saves_calls():
    # the incumbent misses items 0-3; the candidate fixes none of them and breaks item 9
    right = {"inc": set(range(4, 20)), "bad": set(range(4, 9)) | set(range(10, 20))}
    lm, ev, items, inc = await setup(right, 20)
    before = len(lm.calls)
    res = await race(ev, wf("bad"), inc, items, PairedRacing(margin=2, alpha=0.15, cheaper_by=None))
    assert not res.accepted and res.stopped_early
    # after 2 of its 4 possible wins are lost, winning the other 2 would not be significant (2-0, p=0.25)
    assert res.evaluated == 2 and len(lm.calls) - before == 2
    assert res.calls_saved == pytest.approx(18.0)
    assert "stopped after 2 of 20" in res.reason
    # with the tie rule on, a candidate no cheaper than the incumbent stops just as early
    tied = await race(ev, wf("bad"), inc, items, PairedRacing(margin=2, alpha=0.15))
    assert tied.stopped_early and tied.evaluated == 2 and not tied.accepted


async def test_clear_win_is_accepted_after_a_full_evaluation():
    right = {"inc": set(range(6, 20)), "good": set(range(0, 20))}
    _, ev, items, inc = await setup(right, 20, concurrency=3)
    res = await race(ev, wf("good"), inc, items, PairedRacing())
    assert res.accepted and res.complete and (res.wins, res.losses) == (6, 0)
    assert res.batch.score == 1.0 and len(res.batch.results) == 20


async def test_tie_is_refused_and_partial_win_needs_significance():
    right = {"inc": set(range(2, 20)), "same": set(range(2, 20)), "swap": {0, 1, 2} | set(range(4, 20))}
    _, ev, items, inc = await setup(right, 20)
    tie = await race(ev, wf("same"), inc, items, PairedRacing())
    assert not tie.accepted and (tie.wins, tie.losses) == (0, 0)
    swap = await race(ev, wf("swap"), inc, items, PairedRacing(margin=1, alpha=0.4))
    assert (swap.wins, swap.losses) == (2, 1) and not swap.accepted  # p = 0.5 > 0.4
    assert p_value_sign(2, 1) == pytest.approx(0.5)


async def test_racing_decision_equals_the_full_evaluation_decision():
    """Whatever racing stops, a full evaluation would not have accepted either (exactness)."""
    import random
    rng = random.Random(3)
    rule = PairedRacing(margin=2, alpha=0.15)
    for trial in range(25):
        inc_right = {i for i in range(16) if rng.random() < 0.6}
        cand_right = {i for i in range(16) if rng.random() < 0.6}
        right = {"inc": inc_right, f"c{trial}": cand_right}
        _, ev, items, inc = await setup(right, 16)
        raced = await race(ev, wf(f"c{trial}"), inc, items, rule)
        full = await ev(wf(f"c{trial}"), items)
        w, l, _ = count_pairs(full.scores(), inc.scores())
        assert raced.accepted == rule.decide(w, l, cheaper=False)[0]


async def test_on_the_cheaper_path_a_tie_is_judged_on_the_items_raced():
    """A tie (wins ≥ losses) is accepted when the candidate is cheaper on the items raced. Where its
    cost is even, that is the full evaluation's decision; where it is cheap only on the items raced
    last, a stopped race does not wait for them (documented: racing would otherwise run a
    same-priced loser on most items)."""
    import random
    from flowbot.optim.racing import is_cheaper
    rng = random.Random(5)
    rule = PairedRacing(margin=2, alpha=0.15, cheaper_by=0.2)
    accepted_ties = 0
    for trial in range(25):
        inc_right = {i for i in range(16) if rng.random() < 0.6}
        cand_right = {i for i in range(16) if (i in inc_right) != (rng.random() < 0.25)}
        name = f"c{trial}"
        cost = rng.choice([5, 30])  # the candidate is cheap everywhere, or as dear as the incumbent
        words = {"inc": {i: 30 for i in range(16)}, name: {i: cost for i in range(16)}}
        _, ev, items, inc = await setup({"inc": inc_right, name: cand_right}, 16, words=words)
        raced = await race(ev, wf(name), inc, items, rule)
        full = await ev(wf(name), items)
        w, l, _ = count_pairs(full.scores(), inc.scores())
        assert raced.accepted == rule.decide(w, l, cheaper=is_cheaper(full.results, inc, 0.2))[0], trial
        accepted_ties += int(raced.accepted and not rule.passes(raced.wins, raced.losses))
    assert accepted_ties >= 2  # the path is exercised
    # cheap only on the items the incumbent got right (raced last): a tie stopped early is refused
    inc_right = set(range(4, 16))
    right = {"inc": inc_right, "late": (inc_right - {15}) | {0}}
    words = {"inc": {i: 30 for i in range(16)}, "late": {i: (0 if i in inc_right else 30) for i in range(16)}}
    _, ev, items, inc = await setup(right, 16, words=words)
    raced = await race(ev, wf("late"), inc, items, rule)
    assert raced.stopped_early and not raced.accepted


def test_ledger_counts():
    from flowbot.optim.racing import RaceResult
    from flowbot.runtime.batch import BatchResult
    ledger = RaceLedger()
    ledger.record("c1", RaceResult(False, "x", 0, 2, 1, 3, 10, 1.0, BatchResult([], 10, calls=3), calls_saved=7.0))
    assert ledger.to_dict()["calls_saved"] == 7.0 and ledger.to_dict()["saved_fraction"] == 0.7


def test_evaluator_keys_items_by_id_or_content():
    a, b = {"q": "x"}, {"q": "y"}
    ids = [e["id"] for e in with_ids([a, b])]
    assert ids[0] != ids[1] and ids == [e["id"] for e in with_ids([a, b])]
    assert with_ids([{"id": 7, "q": "x"}])[0]["id"] == 7


async def test_evaluator_memo_is_per_item_and_id_free_rows_do_not_collide():
    lm = ScriptedLM(default=lambda req, i: "Answer: " + req.messages[-1][1].split("\n")[-1])
    ev = Evaluator(Executor(LMClient(lm)), lambda e, p: float(p["answer"] == e["q"]), concurrency=2)
    first = await ev(wf("x"), [{"q": "a"}, {"q": "b"}])
    other = await ev(wf("x"), [{"q": "c"}, {"q": "d"}])  # no ids, same positions: must not be served from the memo
    assert first.score == other.score == 1.0 and len(lm.calls) == 4
    both = await ev(wf("x"), [{"q": "a"}, {"q": "d"}])
    assert len(lm.calls) == 4 and both.score == 1.0


def test_paired_difference_exact_for_binary_bootstrap_for_graded():
    a = {f"e{i}": 1.0 for i in range(10)}
    b = {f"e{i}": (1.0 if i < 5 else 0.0) for i in range(10)}
    d = paired_difference(a, b)
    assert (d["wins"], d["losses"], d["mean"]) == (5, 0, 0.5)
    # Clopper-Pearson on 5 wins of 5 discordant items, scaled by 5/10
    assert d["method"].startswith("exact") and d["ci95"][0] == pytest.approx((2 * 0.025 ** 0.2 - 1) * 0.5)
    assert d["ci95"][1] == pytest.approx(0.5)
    graded = paired_difference({"x": 0.5, "y": 0.7, "z": 0.2}, {"x": 0.4, "y": 0.7, "z": 0.1})
    assert graded["method"].startswith("paired bootstrap") and graded["ci95"][0] <= graded["mean"] <= graded["ci95"][1]
    assert paired_difference({}, {}) == {"n": 0}
    assert math.isclose(p_value_sign(0, 0), 1.0)
