"""SQuAD v1.1-style answer metrics (also TriviaQA's official variant) and normalized containment.

These follow the official evaluation scripts' definitions: SQuAD v1.1 ``evaluate-v1.1.py`` and
TriviaQA ``triviaqa_evaluation.py`` (which replaces punctuation by spaces instead of deleting it and
also treats underscores and a few quote marks as punctuation).

>>> exact_match("The Eiffel Tower!", "eiffel tower")
1.0
>>> round(f1("Eiffel Tower in Paris", "the Eiffel Tower"), 3)
0.667
>>> max_over_golds(exact_match, "onions", ["Onion", "Onions"])
1.0
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Iterable

__all__ = [
    "contains", "exact_match", "f1", "max_over_golds", "normalize_answer", "token_prf",
    "triviaqa_exact_match", "triviaqa_f1", "triviaqa_normalize",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_TRIVIAQA_PUNCT = frozenset(string.punctuation + "‘’´`")


def normalize_answer(text: str) -> str:
    """Lowercase, delete ASCII punctuation, replace the articles a/an/the by spaces, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def triviaqa_normalize(text: str) -> str:
    """TriviaQA's normalization: like SQuAD's, but punctuation (and ``_``) becomes a space."""
    text = text.replace("_", " ").lower()
    text = "".join(" " if ch in _TRIVIAQA_PUNCT else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split()).strip()


def token_prf(pred_tokens: list[str], gold_tokens: list[str]) -> tuple[float, float, float]:
    """(precision, recall, F1) of the token multisets; all 0 when nothing is shared."""
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return precision, recall, 2 * precision * recall / (precision + recall)


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the SQuAD-normalized strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1(pred: str, gold: str) -> float:
    """SQuAD v1.1 token F1 (0.0 when no token is shared, including when either side is empty)."""
    return token_prf(normalize_answer(pred).split(), normalize_answer(gold).split())[2]


def triviaqa_exact_match(pred: str, gold: str) -> float:
    return float(triviaqa_normalize(pred) == triviaqa_normalize(gold))


def triviaqa_f1(pred: str, gold: str) -> float:
    return token_prf(triviaqa_normalize(pred).split(), triviaqa_normalize(gold).split())[2]


def max_over_golds(metric: Callable[[str, str], float], pred: str, golds: str | Iterable[str]) -> float:
    """The best score of ``pred`` against any accepted answer (TriviaQA aliases, SQuAD answers).

    Raises ValueError when there is no gold answer, as the official scripts cannot score that either.
    """
    gold_list = [golds] if isinstance(golds, str) else list(golds)
    if not gold_list:
        raise ValueError("max_over_golds needs at least one gold answer")
    return max(float(metric(pred, g)) for g in gold_list)


def contains(pred: str, gold: str) -> float:
    """1.0 when the normalized gold appears in the normalized prediction as whole tokens.

    >>> contains("It was built in 1889 by Eiffel.", "1889"), contains("18890", "1889")
    (1.0, 0.0)
    """
    gold_norm = normalize_answer(gold)
    if not gold_norm:
        return 0.0
    return float(f" {gold_norm} " in f" {normalize_answer(pred)} ")
