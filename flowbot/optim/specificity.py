"""A guard against instruction changes that memorise the minibatch instead of generalising.

Small optimizer models, asked to improve an instruction from a few failures, often write the failing
example into it ("Read the passage and answer the question about the release date of the Flash SWF
file format ...", seen with the 1.5B on DROP). Such a change cannot help on other inputs, yet it costs
a minibatch evaluation and a validation race to find that out. This guard finds it for free: a
proposed text is *specific* when it names things (capitalised names, multi-digit numbers) or copies
long word sequences that occur in the minibatch's examples but not in the text the step already had.

    >>> ex = [{"question": "When was the Flash SWF format released?", "answer": "2008"}]
    >>> specific_terms("Answer about the Flash SWF format released in 2008.", ex, allowed="Answer briefly.")
    ['Flash', 'SWF', '2008']
    >>> specific_terms("When the question asks for a year, answer with the year only.", ex, allowed="")
    []
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from flowbot.scoring.values import format_value

#: capitalised words that are questions, connectives or the task's own vocabulary, never a name
_COMMON = frozenset("""
a an the and or but if then else when where which what who whom whose why how not no yes do does did is
are was were be been it its this that these those for of to in on at by with from as answer answers
question questions passage passages step output input draft number numbers date dates name names
""".split())

_WORD = re.compile(r"[A-Za-z][\w'-]*|\d[\d,.]*\d|\d")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*[-*•]?\s*|[\"'(]\s*)$")


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z0-9]+", text)]


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _candidates(text: str) -> Iterable[str]:
    """Capitalised words not opening a sentence, and numbers of two digits or more."""
    for m in _WORD.finditer(text):
        token = m.group(0)
        if token[0].isdigit():
            if sum(c.isdigit() for c in token) >= 2:
                yield token
        elif token[0].isupper() and token.lower() not in _COMMON and not _SENTENCE_START.search(text[:m.start()]):
            yield token


def specific_terms(text: str, examples: Sequence[Mapping[str, Any]], allowed: str = "", ngram: int = 6) -> list[str]:
    """Names, numbers and long word sequences of ``text`` taken from ``examples`` (any field) that
    ``allowed`` (the current instruction, the task description) does not already contain."""
    source = "\n".join(format_value(v) for ex in examples for v in ex.values())
    source_tokens = set(_WORD.findall(source))
    allowed_lower = allowed.lower()
    found = [t for t in dict.fromkeys(_candidates(text)) if t in source_tokens and t.lower() not in allowed_lower]
    copied = _ngrams(_words(text), ngram) & _ngrams(_words(source), ngram)
    copied -= _ngrams(_words(allowed), ngram)
    if copied:
        found.append(" ".join(sorted(copied)[0]))
    return found
