"""Small, swappable policies of the loops: which minibatch to draw, which nodes to step, which
candidate to expand (acceptance is :mod:`flowbot.optim.racing`, proposal is
:mod:`flowbot.optim.proposal`). Each is one object with one job, passed into the loops and testable
alone; the Protocols say what a replacement must provide.

    >>> UCBSelection(0.0).select([_E(0.5), _E(0.7)], lambda e: e.val_score).val_score
    0.7
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence


class MinibatchSampling(Protocol):
    def next(self) -> list[dict[str, Any]]: ...


class NodeSelection(Protocol):
    def select(self, gradients: dict[str, list[str]]) -> list[str]: ...


class ParentSelection(Protocol):
    def select(self, entries: list[Any], objective: Callable[[Any], float]) -> Any: ...


@dataclass
class _E:  # a stand-in archive entry for the doctest
    val_score: float
    expansions: int = 0


class MinibatchSampler:
    """Seeded epochs over the training set: every example is seen once before any repeats."""

    def __init__(self, examples: Sequence[dict[str, Any]], size: int, seed: int = 0) -> None:
        if not examples:
            raise ValueError("the training split is empty: the optimizer needs training examples")
        self.examples = list(examples)
        self.size = max(1, min(size, len(self.examples)))
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self.epoch = 0

    def next(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while len(batch) < self.size:
            if not self._order:
                self._order = list(range(len(self.examples)))
                self._rng.shuffle(self._order)
                self.epoch += 1
            batch.append(self.examples[self._order.pop()])
        return batch


@dataclass
class BlameOrder:
    """Step the nodes that received gradients, most-blamed first, at most ``max_nodes`` per step."""

    max_nodes: int | None = None

    def select(self, gradients: dict[str, list[str]]) -> list[str]:
        ranked = sorted((n for n, g in gradients.items() if g), key=lambda n: -len(gradients[n]))
        return ranked[: self.max_nodes] if self.max_nodes else ranked


@dataclass
class MinibatchGate:
    """Before a rewrite is raced on validation, it must do strictly better on the minibatch it was
    made for (cheap: a few items); ``enabled=False`` races every rewrite."""

    enabled: bool = True

    def passes(self, new: float, old: float) -> bool:
        return (not self.enabled) or new > old + 1e-12


@dataclass
class UCBSelection:
    """Upper confidence bound over the archive: objective + c·sqrt(ln N / (1 + times expanded)).

    With a handful of tuned sketches, UCB keeps returning to the best one while still trying
    runners-up that were expanded less; a beam of width w would need w expansions per round."""

    exploration: float = 0.3

    def select(self, entries: list[Any], objective: Any) -> Any:
        total = sum(e.expansions for e in entries) + 1
        best, best_value = None, -math.inf
        for e in entries:
            bonus = self.exploration * math.sqrt(math.log(total + 1) / (1 + e.expansions))
            value = objective(e) + bonus
            if value > best_value:
                best, best_value = e, value
        return best


@dataclass
class SoftmaxTopK:
    """AFlow's parent selection: among the top ``k`` by score, sample with a softmax over scores
    (sharpness ``alpha``) mixed with a uniform distribution (share ``uniform_mix``), seeded."""

    k: int = 3
    alpha: float = 0.4
    uniform_mix: float = 0.2
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def select(self, entries: list[Any], objective: Callable[[Any], float]) -> Any:
        top = sorted(entries, key=lambda e: -objective(e))[: self.k]
        best = objective(top[0])
        weights = [math.exp(self.alpha * 10 * (objective(e) - best)) for e in top]
        z = sum(weights)
        probs = [self.uniform_mix / len(top) + (1 - self.uniform_mix) * w / z for w in weights]
        return self._rng.choices(top, weights=probs, k=1)[0]


def retry_sampling(attempt: int, temperature: float, tried: int) -> dict[str, Any]:
    """Sampling for proposal attempt ``attempt``: greedy first; a retry samples with a fresh seed,
    or a deterministic model (and the cache) would return the same duplicate again."""
    return {} if attempt == 0 else {"temperature": temperature, "seed": tried}
