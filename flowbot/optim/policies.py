"""Small, swappable policies of the loops: which minibatch to draw, which nodes to step, what to
accept, which sketch to expand. Each is one object with one job, testable alone."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Sequence


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
class NotWorseAcceptance:
    """Accept a candidate only if it does not lower the held-out score (by more than ``tolerance``);
    before paying for the held-out check, require a strict gain on the minibatch it was made for.
    On a tie, a candidate that costs more than ``tie_cost_increase`` (a fraction of the current
    tokens per example) is refused: a change that buys nothing must not make every call dearer."""

    tolerance: float = 0.0
    minibatch_gate: bool = True
    tie_cost_increase: float | None = 0.25

    def passes_minibatch(self, new: float, old: float) -> bool:
        return (not self.minibatch_gate) or new > old

    def accept(self, new: float, current: float) -> bool:
        return new >= current - self.tolerance - 1e-12

    def too_costly_for_a_tie(self, new: float, current: float, new_cost: float, current_cost: float) -> bool:
        if self.tie_cost_increase is None or new > current + 1e-12 or current_cost <= 0:
            return False
        return new_cost > current_cost * (1 + self.tie_cost_increase)


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


def retry_sampling(attempt: int, temperature: float, tried: int) -> dict[str, Any]:
    """Sampling for proposal attempt ``attempt``: greedy first; a retry samples with a fresh seed,
    or a deterministic model (and the cache) would return the same duplicate again."""
    return {} if attempt == 0 else {"temperature": temperature, "seed": tried}
