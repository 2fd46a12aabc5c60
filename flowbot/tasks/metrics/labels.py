"""Closed-label metrics: FEVER label accuracy and a generic label accuracy.

>>> fever_score("The evidence contradicts it, so the claim is refuted.", "REFUTES")
1.0
"""

from __future__ import annotations

from typing import Sequence

from flowbot.scoring.extract import extract_label

__all__ = ["FEVER_LABELS", "fever_score", "label_accuracy"]

#: FEVER 1.0 labels, as written in the data
FEVER_LABELS: tuple[str, ...] = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")


def label_accuracy(pred: str | None, gold: str, labels: Sequence[str]) -> float:
    """1.0 when the label found in the reply ``pred`` (see ``extract_label``) is ``gold``.

    Raises ValueError when ``gold`` is not one of ``labels`` (case-insensitive): a data error.
    """
    by_key = {label.strip().upper(): label for label in labels}
    gold_label = by_key.get(str(gold).strip().upper())
    if gold_label is None:
        raise ValueError(f"gold label {gold!r} is not one of {list(labels)}")
    if not pred:
        return 0.0
    return float(extract_label(pred, list(labels)) == gold_label)


def fever_score(pred: str | None, gold: str) -> float:
    """FEVER label accuracy of one claim (the label-only part of the official FEVER score)."""
    return label_accuracy(pred, gold, FEVER_LABELS)
