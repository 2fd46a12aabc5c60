"""HotpotQA answer metrics as defined by the official ``hotpot_evaluate_v1.py``.

The normalization is SQuAD's. The F1 differs in one rule: when either normalized side is ``yes``,
``no`` or ``noanswer`` and the two sides differ, F1 (and precision/recall) is 0, so "no" never gets
partial credit against "no, it is not".

>>> hotpot_f1("yes", "yes it is"), round(f1("yes", "yes it is"), 2)
(0.0, 0.5)
"""

from __future__ import annotations

from flowbot.tasks.metrics.squad import f1, normalize_answer, token_prf

__all__ = ["hotpot_exact_match", "hotpot_f1", "hotpot_prf"]

_SPECIAL = ("yes", "no", "noanswer")


def hotpot_prf(pred: str, gold: str) -> tuple[float, float, float]:
    """(F1, precision, recall) in the official script's order."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if (p in _SPECIAL or g in _SPECIAL) and p != g:
        return 0.0, 0.0, 0.0
    precision, recall, score = token_prf(p.split(), g.split())
    return score, precision, recall


def hotpot_f1(pred: str, gold: str) -> float:
    return hotpot_prf(pred, gold)[0]


def hotpot_exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


# the plain SQuAD F1 is what AFlow reports for HotpotQA; re-exported for that comparison
aflow_hotpot_f1 = f1
