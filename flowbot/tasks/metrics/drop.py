"""DROP answer metrics as defined by the official ``drop_eval.py`` (AllenAI), plus AFlow's variant.

Per (prediction, gold) pair, the official definition:

- an answer is one span or a list of spans; each span is split on spaces and hyphens, and each token
  is lowercased, stripped of punctuation (unless it parses as a float), turned into ``str(float(x))``
  when numeric (so ``2`` and ``2.0`` agree, ``1,000`` -> ``1000.0``), and stripped of articles;
- EM is 1 when the normalized span *sets* are equal (and of equal count);
- F1 aligns predicted and gold spans one-to-one to maximize the summed bag-of-words F1 (an optimal
  bipartite matching), where a pair whose gold span holds numbers scores 0 unless the predicted span
  shares at least one of them; F1 is the mean over max(#pred, #gold) spans, rounded to 2 decimals.

With several accepted answers (the ``|``-separated ``ref_text`` of the AFlow / simple-evals files,
or DROP's validated answers) the score is the max over them, blank ones skipped, as both official
scripts do. AFlow itself scored DROP with SQuAD's token F1 and also split the *prediction* on ``|``;
:func:`aflow_drop_f1` reproduces that for comparisons with the AFlow paper.

>>> drop_metrics("1,000 people", "1000")
(0.0, 0.67)
>>> drop_metrics(["Germany", "the UK"], ["UK", "Germany"])
(1.0, 1.0)
>>> drop_score("88", "88|33")
(1.0, 1.0)
"""

from __future__ import annotations

import re
import string
from typing import Sequence, Union

from flowbot.tasks.metrics.squad import f1 as squad_f1

__all__ = ["DropAnswer", "aflow_drop_f1", "drop_em", "drop_f1", "drop_metrics", "drop_normalize",
           "drop_score", "split_references"]

#: one DROP answer: a single span, or several spans (a multi-span answer)
DropAnswer = Union[str, Sequence[str]]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def _is_number(text: str) -> bool:
    # float() on purpose: the official script's notion of a number (accepts "1e3", "nan", "1_0")
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalize_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCT)
    if _is_number(token):
        token = str(float(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def drop_normalize(span: str) -> str:
    """The official normalization of one span (``"The 1,000-yard run."`` -> ``"1000.0 yard run"``)."""
    tokens = (_normalize_token(t) for t in re.split(" |-", span))
    return " ".join(t for t in tokens if t.strip()).strip()


def _bags(answer: DropAnswer) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [drop_normalize(s) for s in spans]
    return normalized, [set(n.split()) for n in normalized]


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    shared = len(pred & gold)
    precision = shared / len(pred) if pred else 1.0
    recall = shared / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], pred: set[str]) -> bool:
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in pred if _is_number(w)})


def _aligned_f1(pred_bags: list[set[str]], gold_bags: list[set[str]]) -> float:
    from scipy.optimize import linear_sum_assignment  # lazy: only DROP needs scipy

    scores = [
        [_bag_f1(p, g) if _numbers_agree(g, p) else 0.0 for p in pred_bags]
        for g in gold_bags
    ]
    rows, cols = linear_sum_assignment(scores, maximize=True)
    # any optimal matching has the same total, so tie-breaking cannot change the result
    total = sum(scores[r][c] for r, c in zip(rows, cols))
    return total / max(len(gold_bags), len(pred_bags))


def drop_metrics(pred: DropAnswer, gold: DropAnswer) -> tuple[float, float]:
    """(EM, F1) of one prediction against one gold answer, per the official definition."""
    pred_spans, pred_bags = _bags(pred)
    gold_spans, gold_bags = _bags(gold)
    em = float(set(pred_spans) == set(gold_spans) and len(pred_spans) == len(gold_spans))
    if not pred_bags or not gold_bags:  # an empty list of spans shares nothing
        return em, 0.0
    return em, round(_aligned_f1(pred_bags, gold_bags), 2)


def drop_em(pred: DropAnswer, gold: DropAnswer) -> float:
    return drop_metrics(pred, gold)[0]


def drop_f1(pred: DropAnswer, gold: DropAnswer) -> float:
    return drop_metrics(pred, gold)[1]


def split_references(references: str | Sequence[DropAnswer]) -> list[DropAnswer]:
    """Accepted answers from ``"a|b"`` (AFlow/simple-evals ``ref_text``) or a list, blanks removed."""
    refs: list[DropAnswer] = references.split("|") if isinstance(references, str) else list(references)
    return [r for r in refs if (r if isinstance(r, str) else (r[0] if r else "")).strip()]


def drop_score(pred: DropAnswer, references: str | Sequence[DropAnswer]) -> tuple[float, float]:
    """(max EM, max F1) over the accepted answers; ``references`` as in :func:`split_references`.

    Raises ValueError when there is no non-blank reference.
    """
    refs = split_references(references)
    if not refs:
        raise ValueError(f"no DROP reference answer in {references!r}")
    scores = [drop_metrics(pred, ref) for ref in refs]
    return max(s[0] for s in scores), max(s[1] for s in scores)


def aflow_drop_f1(pred: str, ref_text: str) -> float:
    """AFlow's DROP score: SQuAD token F1, max over ``|``-parts of both reference and prediction."""
    refs = [r for r in ref_text.split("|") if r.strip()]
    if not refs:
        raise ValueError(f"no DROP reference answer in {ref_text!r}")
    return max(squad_f1(part, ref) for ref in refs for part in pred.split("|"))
