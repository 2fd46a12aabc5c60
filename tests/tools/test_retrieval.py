"""The ``retrieve`` tool: BM25 ranking over every accepted passage format."""

from __future__ import annotations

import json

import pytest

from flowbot.tools import RetrieveTool, ToolError
from flowbot.tools.retrieval import parse_passages, rank, retrieve, tokenize

from .conftest import read_jsonl

HOTPOT = [
    ["Berlin", ["Berlin is the capital of Germany.", " It has 3.7 million inhabitants."]],
    ["Eiffel Tower", ["The Eiffel Tower is a wrought-iron lattice tower in Paris.", " It opened in 1889."]],
    ["Paris", ["Paris is the capital and largest city of France."]],
    ["Louvre", ["The Louvre is the world's most-visited museum, in Paris."]],
]


def test_tokenize_is_lowercase_alphanumeric_without_stopwords() -> None:
    assert tokenize("The Eiffel-Tower, in 1889!") == ["eiffel", "tower", "1889"]


def test_the_matching_passage_ranks_first() -> None:
    top = retrieve("When did the Eiffel Tower open?", HOTPOT, k=1)
    assert [p.title for p, _ in top] == ["Eiffel Tower"]
    assert [p.title for p, _ in retrieve("capital of Germany", HOTPOT, k=1)] == ["Berlin"]
    scores = [s for _, s in retrieve("capital of Germany", HOTPOT, k=4)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_two_passages_still_rank() -> None:  # classic Okapi idf is 0 here; BM25+ is not
    passages = ["Paris is in France.", "Berlin is in Germany."]
    assert [p.text for p, _ in retrieve("Berlin", passages, k=1)] == ["Berlin is in Germany."]


def test_ties_keep_the_original_order() -> None:
    passages = ["alpha beta", "gamma delta", "alpha beta"]
    assert [i for i, _ in rank("alpha", parse_passages(passages))] == [0, 2, 1]
    assert [i for i, _ in rank("the of", parse_passages(passages))] == [0, 1, 2]  # stopwords only


@pytest.mark.parametrize(
    "passages",
    [
        ["Berlin is the capital of Germany.", "Paris is the capital of France."],
        [["Berlin", ["Berlin is the capital", " of Germany."]], ["Paris", ["Paris is the capital of France."]]],
        [["Berlin", "Berlin is the capital of Germany."], ["Paris", "Paris is the capital of France."]],
        [{"title": "Berlin", "text": "Berlin is the capital of Germany."}, {"title": "Paris", "text": "Paris is the capital of France."}],
        {"title": ["Berlin", "Paris"], "sentences": [["Berlin is the capital of Germany."], ["Paris is the capital of France."]]},
        "Berlin is the capital of Germany.\n\nParis is the capital of France.",
        json.dumps([["Berlin", ["Berlin is the capital of Germany."]], ["Paris", ["Paris is the capital of France."]]]),
    ],
    ids=["strings", "hotpot-pairs", "title-text-pairs", "dicts", "hf-hotpot", "blank-lines", "json-string"],
)
def test_every_passage_format_is_accepted(passages: object) -> None:
    parsed = parse_passages(passages)
    assert len(parsed) == 2 and "Germany" in parsed[0].text and "France" in parsed[1].text
    assert "France" in retrieve("capital of France", passages, k=1)[0][0].text


def test_bad_passages_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"passages\[1\]"):
        parse_passages(["fine", 42])
    with pytest.raises(ValueError, match="'text' key"):
        parse_passages([{"title": "x"}])


async def test_tool_respects_k_and_reports_scores() -> None:
    tool = RetrieveTool()
    res = await tool.call(query="museum in Paris", passages=HOTPOT, k=2)
    assert res.output.startswith("[1] Louvre\nThe Louvre") and "[2] " in res.output and "[3] " not in res.output
    assert res.details["titles"][0] == "Louvre" and len(res.details["scores"]) == 2
    assert len((await tool.call(query="Paris", passages=HOTPOT)).details["indices"]) == 3  # default k
    assert len((await tool.call(query="Paris", passages=HOTPOT, k=10)).details["indices"]) == 4


async def test_tool_argument_errors() -> None:
    tool = RetrieveTool()
    with pytest.raises(ToolError, match="'k'"):
        await tool.call(query="x", passages=["a"], k=0)
    with pytest.raises(ToolError, match="no 'passages'"):
        await tool.call(query="x")
    with pytest.raises(ToolError, match="empty"):
        await tool.call(query="x", passages=[])


def test_real_hotpot_rows_find_supporting_paragraphs() -> None:
    rows = read_jsonl("hotpotqa/aflow/hotpotqa_validate.jsonl")[:20]
    hits = 0
    for row in rows:
        gold = {title for title, _ in row["supporting_facts"]}
        top = retrieve(row["question"], row["context"], k=3)
        assert len(top) == 3
        hits += bool(gold & {p.title for p, _ in top})
    assert hits >= 0.8 * len(rows)  # BM25 puts a supporting paragraph in the top 3 for most questions
