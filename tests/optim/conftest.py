"""Shared test doubles of the loops' policies."""

from __future__ import annotations

from typing import Any

import pytest

from flowbot.optim.racing import Acceptance, RaceResult
from flowbot.optim.stats import count_pairs


class StrictGain:
    """Another acceptance policy: score the candidate on every item and accept any strict gain in
    mean score (no margin, no significance, no early stop). Records what it decided."""

    def __init__(self) -> None:
        self.decisions: list[tuple[int, int, bool]] = []  # (wins, losses, accepted)

    async def race(self, evaluate: Any, candidate: Any, incumbent: Any, examples: list[dict[str, Any]],
                   description: str = "racing") -> RaceResult:
        batch = await evaluate(candidate, examples, description)
        wins, losses, ties = count_pairs(batch.scores(), incumbent.scores())
        accepted = batch.score > incumbent.score
        self.decisions.append((wins, losses, accepted))
        return RaceResult(accepted, "a strict gain" if accepted else "no strict gain", wins, losses, ties,
                          len(batch.results), len(examples), 1.0, batch)


@pytest.fixture
def strict_gain() -> Acceptance:
    return StrictGain()
