"""Each loop policy alone: minibatch sampling, node selection, parent selection, the minibatch gate."""

from collections import Counter
from dataclasses import dataclass

import pytest

from flowbot.optim.policies import BlameOrder, MinibatchGate, MinibatchSampler, SoftmaxTopK, UCBSelection


@dataclass
class Entry:
    id: str
    val_score: float
    expansions: int = 0


def test_sampler_walks_an_epoch_before_repeating_across_calls():
    rows = [{"id": i} for i in range(7)]
    sampler = MinibatchSampler(rows, 3, seed=1)
    drawn = [r["id"] for _ in range(3) for r in sampler.next()]
    assert sorted(drawn[:7]) == list(range(7))  # every example once before any repeats
    assert sampler.epoch == 2 and drawn[7] in drawn[:7]
    assert [r["id"] for r in MinibatchSampler(rows, 3, seed=1).next()] == drawn[:3]  # seeded
    with pytest.raises(ValueError, match="training split is empty"):
        MinibatchSampler([], 3)


def test_blame_order_steps_the_most_blamed_nodes_first():
    grads = {"a": ["x"], "b": ["x", "y", "z"], "c": [], "d": ["x", "y"]}
    assert BlameOrder().select(grads) == ["b", "d", "a"]
    assert BlameOrder(max_nodes=1).select(grads) == ["b"]


def test_ucb_returns_to_the_best_and_explores_the_less_expanded():
    best, other = Entry("c0", 0.6, expansions=0), Entry("c1", 0.55, expansions=0)
    assert UCBSelection(0.3).select([best, other], lambda e: e.val_score) is best
    best.expansions = 6
    assert UCBSelection(0.3).select([best, other], lambda e: e.val_score) is other
    assert UCBSelection(0.0).select([best, other], lambda e: e.val_score) is best


def test_softmax_top_k_is_seeded_and_prefers_high_scores():
    entries = [Entry(f"c{i}", s) for i, s in enumerate([0.2, 0.8, 0.5, 0.1])]

    def picks(seed, n):
        sel = SoftmaxTopK(k=3, seed=seed)
        return [sel.select(entries, lambda e: e.val_score).id for _ in range(n)]

    many = Counter(picks(0, 400))
    assert "c3" not in many  # outside the top 3
    assert many["c1"] > many["c2"] > many["c0"] > 0  # the uniform share keeps every top-k entry possible
    assert picks(0, 20) == picks(0, 20) and picks(0, 20) != picks(1, 20)


def test_minibatch_gate_needs_a_strict_gain_unless_off():
    assert MinibatchGate().passes(0.6, 0.4) and not MinibatchGate().passes(0.4, 0.4)
    assert MinibatchGate(enabled=False).passes(0.1, 0.4)
