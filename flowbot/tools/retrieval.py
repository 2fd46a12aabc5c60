"""The ``retrieve`` tool: BM25 over the passages that come with an example (e.g. HotpotQA context).

Deterministic: lowercase alphanumeric tokens minus a small stopword list, BM25+ scores
(``rank_bm25.BM25Plus``: unlike classic Okapi idf, its idf stays positive in tiny corpora, where
a term found in half the passages would otherwise weigh nothing), ties kept in passage order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rank_bm25 import BM25Plus

from flowbot.tools.base import Tool, ToolError, ToolResult

STOPWORDS = frozenset(
    "a an and are as at be been but by did do does for from had has have he her his i in is it "
    "its me my of on or our she so than that the their them then there these they this those to "
    "was we were what when where which who whom why will with you your".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Passage:
    title: str
    text: str

    def render(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric runs, stopwords removed: ``"The Eiffel-Tower!"`` -> ``["eiffel", "tower"]``."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def parse_passages(passages: Any) -> list[Passage]:
    """Accept the usual shapes of example context and return :class:`Passage` objects.

    * a list of strings;
    * HotpotQA pairs ``[[title, [sentence, ...]], ...]`` (or ``[title, text]``);
    * a list of dicts with ``text`` (or ``content``/``paragraph_text``/``sentences``) and optional ``title``;
    * the Hugging Face HotpotQA dict ``{"title": [...], "sentences": [[...], ...]}``;
    * one string with paragraphs separated by blank lines (or a JSON list in a string).
    """
    if isinstance(passages, str):
        text = passages.strip()
        if text.startswith(("[", "{")):
            try:
                return parse_passages(json.loads(text))
            except (json.JSONDecodeError, ValueError):
                pass
        return [Passage("", p.strip()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    if isinstance(passages, dict):
        if isinstance(passages.get("title"), list) and isinstance(passages.get("sentences"), list):
            if len(passages["title"]) != len(passages["sentences"]):
                raise ValueError("passages: 'title' and 'sentences' lists differ in length")
            return [_passage(t, s, i) for i, (t, s) in enumerate(zip(passages["title"], passages["sentences"]))]
        return [_from_item(passages, 0)]
    if isinstance(passages, (list, tuple)):
        return [_from_item(item, i) for i, item in enumerate(passages)]
    raise ValueError(f"passages: expected a list or a string, got {type(passages).__name__}")


def _from_item(item: Any, i: int) -> Passage:
    if isinstance(item, str):
        return Passage("", item.strip())
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
        return _passage(item[0], item[1], i)
    if isinstance(item, dict):
        for key in ("text", "content", "paragraph_text", "sentences", "body"):
            if key in item:
                return _passage(str(item.get("title", "") or ""), item[key], i)
        raise ValueError(f"passages[{i}]: a dict needs a 'text' key (got keys {sorted(item)})")
    raise ValueError(f"passages[{i}]: expected a string, a [title, sentences] pair or a dict, got {type(item).__name__}")


def _passage(title: Any, body: Any, i: int) -> Passage:
    if isinstance(body, (list, tuple)):
        if not all(isinstance(s, str) for s in body):
            raise ValueError(f"passages[{i}]: sentences must be strings")
        body = " ".join(s.strip() for s in body if s.strip())
    if not isinstance(body, str):
        raise ValueError(f"passages[{i}]: text must be a string or a list of sentences, got {type(body).__name__}")
    return Passage(str(title).strip(), body.strip())


def rank(query: str, passages: list[Passage]) -> list[tuple[int, float]]:
    """(passage index, score) for every passage, best first; equal scores keep passage order."""
    docs = [tokenize(p.title + " " + p.text) for p in passages]
    terms = tokenize(query)
    if not passages or not terms or not any(docs):
        return [(i, 0.0) for i in range(len(passages))]
    scores = BM25Plus(docs).get_scores(terms)
    return sorted(((i, float(s)) for i, s in enumerate(scores)), key=lambda p: (-p[1], p[0]))


def retrieve(query: str, passages: Any, k: int = 3) -> list[tuple[Passage, float]]:
    """The top ``k`` passages for ``query`` with their BM25 scores.

    >>> [p.title for p, _ in retrieve("capital of France", [["Paris", ["Paris is the capital of France."]],
    ...                                                      ["Berlin", ["Berlin is in Germany."]]], k=1)]
    ['Paris']
    """
    parsed = parse_passages(passages)
    return [(parsed[i], s) for i, s in rank(query, parsed)[:k]]


class RetrieveTool(Tool):
    """BM25 search over the passages given with the example.

    Called as ``retrieve(query=..., passages=..., k=3)``; the output lists the top passages as
    ``[1] Title\\ntext`` blocks, ``details`` holds their indices, titles and scores.
    """

    name = "retrieve"
    description = "Search the given passages for a query (BM25) and return the best matches with their titles."
    primary_arg = "query"
    extra_args = ("passages", "k")

    def __init__(self, *, k: int = 3) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"retrieve tool: k must be a positive integer, got {k!r}")
        self.k = k

    async def call(self, **kwargs: Any) -> ToolResult:
        unknown = set(kwargs) - {"query", "passages", "k"}
        if unknown:
            raise ToolError(f"retrieve: unknown argument(s) {sorted(unknown)}; expected query, passages, k")
        query, passages, k = kwargs.get("query"), kwargs.get("passages"), kwargs.get("k", self.k)
        if not isinstance(query, str):
            raise ToolError(f"retrieve: 'query' must be a string, got {type(query).__name__}")
        if passages is None:
            raise ToolError("retrieve: no 'passages' given to search")
        if isinstance(k, str) and k.strip().isdigit():
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ToolError(f"retrieve: 'k' must be a positive integer, got {k!r}")
        try:
            parsed = parse_passages(passages)
        except ValueError as exc:
            raise ToolError(f"retrieve: {exc}") from None
        if not parsed:
            raise ToolError("retrieve: the passages are empty")
        ranked = rank(query, parsed)[:k]
        blocks = [f"[{n}] {parsed[i].render()}" for n, (i, _) in enumerate(ranked, 1)]
        details = {
            "indices": [i for i, _ in ranked],
            "titles": [parsed[i].title for i, _ in ranked],
            "scores": [round(s, 6) for _, s in ranked],
        }
        return ToolResult("\n\n".join(blocks), details=details)
