"""GSM8K numeric equality, generic numbers, and FEVER label accuracy."""

from __future__ import annotations

from fractions import Fraction

import pytest

from flowbot.tasks.metrics import (
    FEVER_LABELS, fever_score, gsm8k_gold, gsm8k_score, label_accuracy, numeric_equal, parse_number,
)

from .metrics_data import read_jsonl


@pytest.mark.parametrize("text, value", [
    ("1,000", Fraction(1000)),
    ("$1,000.50", Fraction(2001, 2)),
    ("-3", Fraction(-3)),
    ("−3", Fraction(-3)),  # unicode minus
    ("3.0", Fraction(3)),
    (".5", Fraction(1, 2)),
    ("1/2", Fraction(1, 2)),
    ("-1/2", Fraction(-1, 2)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("50%", Fraction(50)),
    ("1e3", Fraction(1000)),
    ("18.", Fraction(18)),
    (7, Fraction(7)),
    (0.25, Fraction(1, 4)),
])
def test_parse_number(text: object, value: Fraction) -> None:
    assert parse_number(text) == value  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["12 apples", "1,00", "1/0", "abc", "", "1/2/3", "nan"])
def test_parse_number_rejects(text: str) -> None:
    assert parse_number(text) is None


def test_parse_number_rejects_bool_and_inf() -> None:
    assert parse_number(True) is None
    assert parse_number(float("inf")) is None


def test_numeric_equal() -> None:
    assert numeric_equal("1,000", "1000")
    assert numeric_equal("$1,000.00", 1000)
    assert numeric_equal("0.333333", "1/3", rel_tol=1e-5)
    assert not numeric_equal("0.333", "1/3", rel_tol=1e-5)
    assert numeric_equal(0.1 + 0.2, "0.3")
    assert numeric_equal("1000000", "1000001")  # within the default relative 1e-6
    assert not numeric_equal("1000000", "1000001", rel_tol=0)
    assert not numeric_equal("five", "5")


def test_gsm8k_gold_formats() -> None:
    assert gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gsm8k_gold("He pays ... #### 1,000") == "1000"
    assert gsm8k_gold("18") == "18"
    assert gsm8k_gold(18) == "18"


@pytest.mark.parametrize("pred, gold, score", [
    ("Answer: 1,000", "#### 1000", 1.0),
    ("18.00", "18", 1.0),
    (18.0, "18", 1.0),
    (18, "#### 18", 1.0),
    ("The answer is \\boxed{18}.", "18", 1.0),
    ("$1,000.50", "1000.5", 1.0),
    ("-3", "#### -3", 1.0),
    ("17", "18", 0.0),
    ("Janet makes 16 - 3 - 4 = 9 eggs, so 9 * 2 = 18 dollars.\nAnswer: 19", "18", 0.0),
    ("no idea", "18", 0.0),
    (None, "18", 0.0),
])
def test_gsm8k_score(pred: object, gold: str, score: float) -> None:
    assert gsm8k_score(pred, gold) == score  # type: ignore[arg-type]


def test_gsm8k_gold_must_be_a_number() -> None:
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_score("5", "#### five")


def test_gsm8k_official_solutions_score_against_themselves() -> None:
    rows = read_jsonl("gsm8k/official/test.jsonl")
    for row in rows:  # the worked solution, "#### N" line included, is a valid reply
        assert gsm8k_score(row["answer"], row["answer"]) == 1.0
        wrong = str(int(Fraction(gsm8k_gold(row["answer"]))) + 1)
        assert gsm8k_score(f"So the answer is {wrong}.", row["answer"]) == 0.0


def test_gsm8k_aflow_rows_with_plain_gold_and_comma_replies() -> None:
    rows = read_jsonl("gsm8k/aflow/gsm8k_validate.jsonl")
    for row in rows:
        value = parse_number(row["answer"])
        assert value is not None
        pretty = f"{int(value):,}" if value.denominator == 1 else str(float(value))
        assert gsm8k_score(f"Let me compute.\n**Answer:** ${pretty}", row["answer"]) == 1.0
        # the cot lacks the "####" line; with a requested answer line appended it scores
        assert gsm8k_score(f"{row['cot']}\nAnswer: {row['answer']}", row["answer"]) == 1.0


# --------------------------------------------------------------------------- FEVER


@pytest.mark.parametrize("reply, gold, score", [
    ("Answer: SUPPORTS", "SUPPORTS", 1.0),
    ("Answer: supported", "SUPPORTS", 1.0),
    ("The evidence contradicts it, so the claim is refuted.", "REFUTES", 1.0),
    ("NEI", "NOT ENOUGH INFO", 1.0),
    ("Answer: not enough information", "not enough info", 1.0),  # gold case does not matter
    ("Answer: REFUTES", "SUPPORTS", 0.0),
    ("I am not sure.", "NOT ENOUGH INFO", 0.0),
    ("", "SUPPORTS", 0.0),
    (None, "SUPPORTS", 0.0),
])
def test_fever_score(reply: str | None, gold: str, score: float) -> None:
    assert fever_score(reply, gold) == score


def test_label_accuracy_rejects_unknown_gold_and_handles_letters() -> None:
    with pytest.raises(ValueError, match="not one of"):
        fever_score("SUPPORTS", "MAYBE")
    assert label_accuracy("Answer: b", "B", ["A", "B", "C"]) == 1.0
    assert label_accuracy("Answer: (C)", "B", ["A", "B", "C"]) == 0.0


def test_fever_on_shared_claims_with_label_variants() -> None:
    rows = read_jsonl("fever/paper_dev.jsonl")[:600]
    variants = {
        "SUPPORTS": ["Supported", "supports", "SUPPORTS"],
        "REFUTES": ["Refuted", "refutes", "REFUTE"],
        "NOT ENOUGH INFO": ["Not enough information", "NEI", "not enough info"],
    }
    for i, row in enumerate(rows):
        label = row["label"]
        written = variants[label][i % 3]
        reply = f"Claim: {row['claim']}\nLet me think about the evidence.\nAnswer: {written}"
        assert fever_score(reply, label) == 1.0, reply
        wrong = FEVER_LABELS[(FEVER_LABELS.index(label) + 1) % 3]
        assert fever_score(f"Claim: {row['claim']}\nAnswer: {wrong.lower()}", label) == 0.0
