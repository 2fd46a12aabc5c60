"""Answer extraction on replies shaped like those of small coding-tuned models."""

from __future__ import annotations

import re

import pytest

from flowbot.scoring.extract import (
    EXTRACTION_RULES, apply_extraction, extract_answer, extract_boxed, extract_code, extract_json,
    extract_label, extract_number,
)

FEVER = ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"]

# --------------------------------------------------------------------------- extract_answer


@pytest.mark.parametrize("reply, expected", [
    ("Answer: 42", "42"),
    ("answer:   Paris  ", "Paris"),
    ("**Answer:** 42", "42"),
    ("**Answer**: 42", "42"),
    ("**Answer: 42**", "42"),
    ("### Final Answer: Denver Broncos.", "Denver Broncos"),
    ("Final answer: \"Creature Comforts\"", "Creature Comforts"),
    ("Answer:\n\n  17 apples", "17 apples"),
    ("Answer: `no`", "no"),
    ("Answer: $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("Answer: \\boxed{\\text{Germany}}", "Germany"),
])
def test_answer_line_forms(reply: str, expected: str) -> None:
    assert extract_answer(reply) == expected


def test_last_answer_line_wins() -> None:
    reply = "First guess. Answer: 12\nWait, I made an error: 3*5 = 15.\nAnswer: 15"
    assert extract_answer(reply) == "15"


def test_answer_line_beats_boxed() -> None:
    # the requested format wins over a boxed intermediate result
    assert extract_answer("We get \\boxed{10} apples per box.\nAnswer: 30") == "30"


def test_boxed_instead_of_answer_line() -> None:
    reply = (
        "To find the total, multiply the price by the quantity:\n"
        "\\[\n3 \\times 4 = 12\n\\]\n"
        "So the total cost is \\(\\boxed{12}\\) dollars.\n"
        "I hope it helps!"
    )
    assert extract_answer(reply) == "12"


def test_final_answer_phrase_in_minerva_style() -> None:
    reply = "... therefore $x=2$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert extract_answer(reply) == "\\frac{1}{2}"


def test_answer_is_phrase_without_colon() -> None:
    assert extract_answer("Adding them gives 3.5 apples.\nThe answer is 3.5 apples.\nHope that helps!") == "3.5 apples"


def test_last_line_skips_code_fences() -> None:
    reply = "```python\nprint(3 * 4)\n```\nOutput:\n```\n12\n```"
    assert extract_answer(reply) == "12"


def test_bold_marker_with_answer_on_next_line_and_echoed_empty_marker() -> None:
    assert extract_answer("**Answer:**\n42") == "42"
    # a model that goes on to echo the next prompt leaves an empty marker at the end
    assert extract_answer("Answer: 42\nQuestion: and the next one?\nAnswer:") == "42"


def test_empty_and_marker_only_replies() -> None:
    assert extract_answer("") == ""
    assert extract_answer("   \n ") == ""
    assert extract_answer("Answer:") == ""
    assert extract_answer("**Answer:**") == ""


# --------------------------------------------------------------------------- extract_boxed


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{5}", "5"),
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the group
    ("so $x = \\boxed 5$.", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{3} and a truncated \\boxed{4", "3"),
    ("no box here", None),
    ("\\boxedfoo{3}", None),
])
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


# --------------------------------------------------------------------------- extract_number


@pytest.mark.parametrize("reply, expected", [
    ("Answer: 1,000", "1000"),
    ("She pays $1,000.50 in total.", "1000.5"),
    ("The temperature drops to -3 degrees.\nAnswer: -3", "-3"),
    ("Answer: 3.0", "3"),
    ("Answer: 18.00", "18"),
    ("Answer: 50%", "50"),
    ("Half of it: \\boxed{\\frac{1}{2}}", "1/2"),
    ("Answer: 1/2", "1/2"),
    ("Answer: .5", "0.5"),
    ("Answer: 007", "7"),
    ("There are 3 boxes with 4 apples each, so 12 apples.", "12"),
    # the answer line holds no number: fall back to the last number of the reply
    ("5 + 7 = 12\nAnswer: twelve", "12"),
    ("no digits at all", None),
])
def test_extract_number(reply: str, expected: str | None) -> None:
    assert extract_number(reply) == expected


def test_number_from_boxed_not_from_trailing_chatter() -> None:
    reply = "Step 1: 48 / 2 = 24\nStep 2: 48 + 24 = 72\nThe answer is \\boxed{72}.\n\nLet me know if you need 2 more examples!"
    assert extract_number(reply) == "72"


def test_number_with_fake_output_block() -> None:
    # a coding model "runs" its own code; the invented output repeats its answer
    reply = (
        "```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```\n"
        "Output:\n```\n18\n```\n"
    )
    assert extract_number(reply) == "18"


def test_numbers_inside_words_and_versions_are_not_picked() -> None:
    assert extract_number("Answer: python3 says 5") == "5"
    assert extract_number("Version 1.2.3 has 7 bugs") == "7"


# --------------------------------------------------------------------------- extract_label


@pytest.mark.parametrize("reply, expected", [
    ("Answer: SUPPORTS", "SUPPORTS"),
    ("Answer: supports", "SUPPORTS"),
    ("The claim is Supported by the passage.", "SUPPORTS"),
    ("Answer: REFUTED", "REFUTES"),
    ("Answer: NOT ENOUGH INFO", "NOT ENOUGH INFO"),
    ("Answer: not enough information.", "NOT ENOUGH INFO"),
    ("Answer: Not-Enough-Info", "NOT ENOUGH INFO"),
    ("Answer: NEI", "NOT ENOUGH INFO"),
    ("not_enough_info", "NOT ENOUGH INFO"),
    # several labels mentioned: the one the answer settles on, i.e. the last
    ("It could be SUPPORTS or REFUTES. Final answer: REFUTES", "REFUTES"),
    ("The passage refutes it? No, it supports the claim.", "SUPPORTS"),
    # a negated mention is not a vote for that label
    ("This is not supported; the evidence refutes it.", "REFUTES"),
    ("The claim is not supported by the evidence.", None),
    ("I do not know.", None),
])
def test_extract_label_fever(reply: str, expected: str | None) -> None:
    assert extract_label(reply, FEVER) == expected


def test_label_in_answer_part_beats_mentions_in_reasoning() -> None:
    reply = "Answer: SUPPORTS\n\n(The alternatives REFUTES and NOT ENOUGH INFO do not fit.)"
    # the answer line is searched first, so the later mentions in the remark do not count
    assert extract_label(reply, FEVER) == "SUPPORTS"


def test_label_returned_as_given_and_single_letters_are_case_sensitive() -> None:
    assert extract_label("answer: yes", ["Yes", "No"]) == "Yes"
    assert extract_label("The answer is B, a classic case.", ["A", "B", "C", "D"]) == "B"
    assert extract_label("a cat sat on a mat", ["A", "B"]) is None


def test_extract_label_needs_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        extract_label("SUPPORTS", [])


# --------------------------------------------------------------------------- extract_code


def test_code_picks_largest_python_block_not_example_or_output() -> None:
    reply = (
        "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Example:\n```python\nprint(add(1, 2))\n```\nOutput:\n```\n3\n```"
    )
    assert extract_code(reply) == "def add(a, b):\n    return a + b"


def test_code_untagged_block_unclosed_block_and_plain_text() -> None:
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```python\ndef f(x):\n    return x\n") == "def f(x):\n    return x"
    assert extract_code("def f(x):\n  return x\n") == "def f(x):\n  return x"
    assert extract_code("```py\ny = 2\n```") == "y = 2"


def test_code_prefers_python_over_untagged() -> None:
    reply = "```\nsome long untagged notes that are not code at all\n```\n```python\nz = 3\n```"
    assert extract_code(reply) == "z = 3"


# --------------------------------------------------------------------------- extract_json


def test_json_fenced_with_prose() -> None:
    reply = 'Sure! Here is the result:\n```json\n{"answer": "Paris", "confidence": 0.9}\n```\nLet me know.'
    assert extract_json(reply) == {"answer": "Paris", "confidence": 0.9}


def test_json_bare_in_prose_and_last_object_wins() -> None:
    reply = 'Format: {"answer": "..."}\nMy reply: {"answer": "42", "steps": [1, 2]} done.'
    assert extract_json(reply) == {"answer": "42", "steps": [1, 2]}


def test_json_lenient_forms() -> None:
    assert extract_json('{"a": 1,}') == {"a": 1}
    assert extract_json("{'a': 'it', 'ok': True, 'x': None}") == {"a": "it", "ok": True, "x": None}
    assert extract_json('text {"s": "braces } inside [ strings"} end') == {"s": "braces } inside [ strings"}
    assert extract_json("[1, 2, 3]") == [1, 2, 3]


def test_json_missing_raises_clear_error() -> None:
    with pytest.raises(ValueError, match="no JSON object found"):
        extract_json("I could not produce the object {answer}.")
    with pytest.raises(ValueError, match="no JSON object found"):
        extract_json("")


# --------------------------------------------------------------------------- apply_extraction


def test_apply_extraction_dispatch() -> None:
    reply = "Thinking...\n**Answer:** 1,234 apples"
    assert apply_extraction("text", "  hi \n") == "hi"
    assert apply_extraction("answer", reply) == "1,234 apples"
    assert apply_extraction("number", reply) == "1234"
    assert apply_extraction("boxed", "so \\boxed{7}") == "7"
    assert apply_extraction("boxed", "Answer: 7") == "7"  # nothing boxed: the answer instead
    assert apply_extraction("label", "Answer: refuted", labels=FEVER) == "REFUTES"
    assert apply_extraction("json", '{"a": 1}') == {"a": 1}
    assert apply_extraction("code", "```python\nx = 1\n```") == "x = 1"
    assert apply_extraction("regex", "id=3, id=7", pattern=r"id=(\d+)") == "7"
    assert apply_extraction("regex", "id=3, id=7", pattern=re.compile(r"id=\d+")) == "id=7"
    assert apply_extraction("regex", "nothing", pattern=r"id=(\d+)") is None


def test_apply_extraction_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"unknown extraction rule 'boxxed'.*text, answer, boxed"):
        apply_extraction("boxxed", "x")
    with pytest.raises(ValueError, match="needs a pattern"):
        apply_extraction("regex", "x")
    with pytest.raises(ValueError, match="invalid regex pattern"):
        apply_extraction("regex", "x", pattern="(")
    with pytest.raises(ValueError, match="needs a non-empty list of labels"):
        apply_extraction("label", "x")
    assert set(EXTRACTION_RULES) == {"text", "answer", "boxed", "number", "label", "json", "code", "regex", "reasoning"}
