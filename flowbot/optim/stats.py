"""Paired comparisons of two workflows on the same items, with exact tests and intervals.

Only the items where the two differ carry information (wins and losses); the exact one-sided sign
test on them decides, and the interval of the mean difference is exact for 0/1 scores (Clopper–
Pearson on the share of wins among discordant items, conditional on their number) and a seeded
paired bootstrap otherwise (F1 and other graded scores).

    >>> p_value_sign(wins=5, losses=0)
    0.03125
    >>> d = paired_difference({"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 1, "c": 0})
    >>> d["wins"], d["losses"], d["method"]
    (1, 0, 'exact (sign test on discordant items)')
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy.stats import binomtest

#: two scores closer than this are a tie (metrics return floats)
EPS = 1e-9


def p_value_sign(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of ``wins`` or more wins among the discordant items if
    neither workflow were better."""
    n = wins + losses
    if n == 0:
        return 1.0
    return float(binomtest(wins, n, 0.5, alternative="greater").pvalue)


def count_pairs(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[int, int, int]:
    """(wins, losses, ties) of ``a`` against ``b`` on the items both scored."""
    wins = losses = ties = 0
    for key, sa in a.items():
        if key not in b:
            continue
        diff = sa - b[key]
        if diff > EPS:
            wins += 1
        elif diff < -EPS:
            losses += 1
        else:
            ties += 1
    return wins, losses, ties


def _is_binary(values: list[float]) -> bool:
    return all(abs(v) < EPS or abs(v - 1.0) < EPS for v in values)


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], *, level: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Mean per-item difference ``a − b`` on shared items, with an exact interval (0/1 scores) or a
    seeded percentile bootstrap (graded scores), wins/losses and the two-sided sign-test p-value."""
    common = [k for k in a if k in b]
    n = len(common)
    if n == 0:
        return {"n": 0}
    diffs = [a[k] - b[k] for k in common]
    mean = sum(diffs) / n
    wins, losses, _ = count_pairs({k: a[k] for k in common}, b)
    discordant = wins + losses
    p_two = float(binomtest(wins, discordant, 0.5).pvalue) if discordant else 1.0
    if _is_binary([a[k] for k in common] + [b[k] for k in common]):
        if discordant:
            ci = binomtest(wins, discordant, 0.5).proportion_ci(confidence_level=level, method="exact")
            scale = discordant / n
            low, high = (2 * ci.low - 1) * scale, (2 * ci.high - 1) * scale
        else:
            low = high = 0.0
        method = "exact (sign test on discordant items)"
    else:
        rng = np.random.default_rng(seed)
        means = np.asarray(diffs)[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        tail = (1 - level) / 2
        low, high = (float(x) for x in np.quantile(means, [tail, 1 - tail]))
        method = f"paired bootstrap ({resamples} resamples, seed {seed})"
    return {"n": n, "mean": mean, "ci95" if abs(level - 0.95) < 1e-9 else f"ci{level:g}": [low, high],
            "wins": wins, "losses": losses, "ties": n - discordant, "p_two_sided": p_two, "method": method}
