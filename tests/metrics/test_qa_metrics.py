"""SQuAD-style, TriviaQA and HotpotQA answer metrics: cases worked out by hand from the official
definitions (SQuAD v1.1 evaluate script, triviaqa_evaluation.py, hotpot_evaluate_v1.py)."""

from __future__ import annotations

import pytest

from flowbot.tasks.metrics import (
    contains, exact_match, f1, hotpot_exact_match, hotpot_f1, max_over_golds, normalize_answer,
    triviaqa_exact_match, triviaqa_f1, triviaqa_normalize,
)
from flowbot.tasks.metrics.hotpotqa import hotpot_prf

from .metrics_data import read_jsonl


@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  An   apple, a day ", "apple day"),
    ("U.S.A.", "usa"),
    ("1,000", "1000"),
    ("theater", "theater"),  # articles only as whole words
    ("state-of-the-art", "stateoftheart"),  # the hyphens go first, so "the" is no word any more
    ("Horse’s", "horse’s"),  # curly quotes are not ASCII punctuation
    ("a the an", ""),
])
def test_squad_normalization(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_exact_match_cases() -> None:
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("1,000", "1000") == 1.0
    assert exact_match("an apple", "apple") == 1.0
    assert exact_match("apples", "apple") == 0.0
    assert exact_match("a", "the") == 1.0  # both normalize to the empty string


@pytest.mark.parametrize("pred, gold, expected", [
    ("Eiffel Tower in Paris", "the Eiffel Tower", 2 / 3),  # P 2/4, R 2/2
    ("the the cat cat cat", "cat", 0.5),  # multiset overlap 1: P 1/3, R 1
    ("cat", "cat cat", 2 / 3),  # P 1, R 1/2
    ("Paris", "London", 0.0),
    ("", "anything", 0.0),
    ("", "", 0.0),  # v1.1: nothing shared scores 0, even two empty answers
    ("The Beatles.", "beatles", 1.0),
])
def test_f1_cases(pred: str, gold: str, expected: float) -> None:
    assert f1(pred, gold) == pytest.approx(expected)


def test_triviaqa_normalization_replaces_punctuation_by_spaces() -> None:
    assert triviaqa_normalize("Allium-cepa") == "allium cepa"
    assert triviaqa_normalize("Hot_blooded (horse)") == "hot blooded horse"
    assert triviaqa_normalize("Horse’s") == "horse s"
    assert triviaqa_normalize("state-of-the-art") == "state of art"
    # the difference matters for EM
    assert triviaqa_exact_match("Allium-cepa", "allium cepa") == 1.0
    assert exact_match("Allium-cepa", "allium cepa") == 0.0
    assert triviaqa_f1("horse’s", "horse") == pytest.approx(2 / 3)


def test_max_over_golds_takes_the_best_alias() -> None:
    aliases = ["Onion skins", "Allium cepa", "Onion", "Onions", "Spanish onion"]
    assert max_over_golds(triviaqa_exact_match, "Onions.", aliases) == 1.0
    # vs "Spanish onion" 1/2, vs "Onions" 2/3 (P 1/2, R 1): the best one counts
    assert max_over_golds(f1, "Spanish onions", aliases) == pytest.approx(2 / 3)
    assert max_over_golds(exact_match, "Paris", "paris") == 1.0  # a single gold string
    with pytest.raises(ValueError, match="at least one gold"):
        max_over_golds(f1, "x", [])


def test_triviaqa_aliases_on_shared_data() -> None:
    rows = read_jsonl("triviaqa/triviaqa_sm_sub.jsonl")[:300]
    for row in rows:
        aliases = row["aliases"]
        assert max_over_golds(triviaqa_exact_match, f"The {row['answer']}.", aliases) == 1.0
        other = next(r["answer"] for r in rows if triviaqa_normalize(r["answer"]) not in
                     {triviaqa_normalize(a) for a in aliases})
        assert max_over_golds(triviaqa_exact_match, other, aliases) == 0.0


def test_contains_is_token_aligned() -> None:
    assert contains("It was built in 1889 by Eiffel.", "1889") == 1.0
    assert contains("18890", "1889") == 0.0
    assert contains("I think it is The Beatles!", "beatles") == 1.0
    assert contains("anything", "the") == 0.0  # empty after normalization


# --------------------------------------------------------------------------- HotpotQA


@pytest.mark.parametrize("pred, gold, expected", [
    ("yes", "yes", 1.0),
    ("Yes.", "yes", 1.0),
    ("yes it is", "yes", 0.0),  # SQuAD F1 would give 0.5
    ("no", "no way", 0.0),  # the prediction is special and differs
    ("noanswer", "no answer", 0.0),
    ("Arthur's Magazine", "Arthur's Magazine", 1.0),
    ("the magazine of Arthur", "Arthur's Magazine", 0.4),  # P 1/3, R 1/2
])
def test_hotpot_f1_cases(pred: str, gold: str, expected: float) -> None:
    assert hotpot_f1(pred, gold) == pytest.approx(expected)


def test_hotpot_yes_no_rule_differs_from_squad() -> None:
    assert f1("yes it is", "yes") == pytest.approx(0.5)
    assert hotpot_prf("the magazine of Arthur", "Arthur's Magazine") == pytest.approx((0.4, 1 / 3, 0.5))
    assert hotpot_prf("yes", "no") == (0.0, 0.0, 0.0)
    assert hotpot_exact_match("The Oklahoma Sooners", "Oklahoma Sooners") == 1.0


def test_hotpot_on_shared_data_gold_scores_one_and_swapped_yes_no_zero() -> None:
    rows = read_jsonl("hotpotqa/aflow/hotpotqa_validate.jsonl")
    for row in rows:
        gold = row["answer"]
        assert hotpot_f1(f"**{gold}**", gold) == 1.0
        assert hotpot_exact_match(f"The {gold}.", gold) == 1.0
        if gold in ("yes", "no"):
            assert hotpot_f1("no" if gold == "yes" else "yes", gold) == 0.0
            assert hotpot_f1(f"{gold}, definitely", gold) == 0.0
