"""Answer extraction: turn a raw LLM reply into the value a node writes.

Small coding-tuned models rarely follow the requested format exactly: they box answers
(``\\boxed{42}``) instead of writing ``Answer: 42``, wrap things in markdown, or invent a code block
with a fake "Output:". The heuristics here are ordered so that the explicitly requested form wins,
then the common substitutes, then the last line of the reply.

>>> extract_answer("Let me think.\\n**Answer:** 42.")
'42'
>>> extract_number("So the total is \\\\boxed{1,000}")
'1000'
>>> apply_extraction("label", "I think the claim is supported.", labels=["SUPPORTS", "REFUTES"])
'SUPPORTS'
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Callable, Sequence

__all__ = [
    "EXTRACTION_RULES", "apply_extraction", "extract_answer", "extract_boxed", "extract_code",
    "extract_json", "extract_label", "extract_number",
]

# --------------------------------------------------------------------------- boxed


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'`` (escaped braces do not count)."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip \{ \} and any other escape
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None  # unbalanced: a truncated reply


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` in ``text``.

    >>> extract_boxed(r"so $\\boxed{\\frac{1}{2}}$ and not \\boxed{3")
    '\\\\frac{1}{2}'
    """
    if not text:
        return None
    for match in reversed(list(_BOXED_RE.finditer(text))):
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _braced(text, i)
            if group is not None:
                return group[0].strip()
        elif i > match.end():  # "\boxed 5": one token up to whitespace or math delimiter
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group().rstrip(".,")
    return None


# --------------------------------------------------------------------------- answer

# "Answer:", "Final answer:", "**Answer:**", "**Answer**:", "### Final Answer:" ...
_MARKER_RE = re.compile(r"(?i)(?<![A-Za-z])(?:final\s+answer|answer)\s*(?:\*\*|__)?\s*[:：]")
# "the final answer is 42." inside prose
_PHRASE_RE = re.compile(r"(?i)\b(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*(.+?)\s*(?:\.\s|\.?$)", re.M)
_FENCE_LINE_RE = re.compile(r"^\s*(```|~~~)")
_WRAPPERS = ("**", "__", "`", "*", '"', "'", "“", "”", "‘", "’")
_TEXT_CMD_RE = re.compile(r"^\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{(.*)\}$", re.S)


def _clean(answer: str) -> str:
    """Strip markdown, quotes, math delimiters and a trailing period around an answer."""
    s = answer.strip()
    while True:
        before = s
        s = re.sub(r"^(?:#+\s+|>\s*|[-*]\s+)", "", s.strip())  # heading, quote, bullet
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        for w in _WRAPPERS:
            if len(s) >= 2 * len(w) and s.startswith(w) and s.endswith(w):
                s = s[len(w) : -len(w)].strip()
        s = s.strip("*").strip()  # "42**" / "**42": bold split by the answer marker
        if s.startswith("$") and s.endswith("$") and len(s) > 1 and "$" not in s.strip("$"):
            s = s.strip("$").strip()
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)].strip()
        text_cmd = _TEXT_CMD_RE.match(s)
        if text_cmd and _braced(s, s.index("{")) == (text_cmd.group(1), len(s)):
            s = text_cmd.group(1).strip()
        if s == before:
            return s


def _content_lines(text: str) -> list[str]:
    """Non-empty lines that are not code fences or pure markdown decoration."""
    lines = []
    for line in text.splitlines():
        if not line.strip() or _FENCE_LINE_RE.match(line) or re.fullmatch(r"\s*[-*_=#>]+\s*", line):
            continue
        lines.append(line)
    return lines


def _after_marker(text: str) -> str | None:
    """What follows the last answer marker with content: the rest of its line, or the next line."""
    matches = list(_MARKER_RE.finditer(text))
    if not matches:
        return None
    for match in reversed(matches):  # a trailing empty "Answer:" (an echoed prompt) is skipped
        first, _, tail = text[match.end() :].partition("\n")
        if _clean(first):
            return first
        following = _content_lines(tail)
        if following and not _MARKER_RE.search(following[0]):
            return following[0]
    return ""


def _refine(answer: str) -> str:
    """A boxed value or an 'answer is X' phrase inside an answer line is the real answer."""
    boxed = extract_boxed(answer)
    if boxed:
        return boxed
    phrase = _PHRASE_RE.search(answer)
    if phrase and _clean(phrase.group(1)):
        return phrase.group(1)
    return answer


def extract_answer(text: str) -> str:
    """The final answer in a reply.

    Priority: the last ``Answer:`` / ``Final answer:`` line (markdown bold allowed), the last
    ``\\boxed{}``, the last "the answer is X" phrase, the last non-empty line (code fences skipped).
    Surrounding markdown, quotes, ``$...$``, ``\\text{}`` and a trailing period are removed.

    >>> extract_answer("Step 1 ... step 2.\\nThe result is \\\\boxed{7}.\\nI hope this helps!")
    '7'
    """
    if not text or not text.strip():
        return ""
    marked = _after_marker(text)
    if marked is not None and _clean(marked):
        return _clean(_refine(marked))
    boxed = extract_boxed(text)
    if boxed:
        return _clean(boxed)
    phrases = [m.group(1) for m in _PHRASE_RE.finditer(text) if _clean(m.group(1))]
    if phrases:
        return _clean(_refine(phrases[-1]))
    lines = _content_lines(text)
    return _clean(_MARKER_RE.sub("", lines[-1])) if lines else ""


# --------------------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(
    r"(?<![\w.])"  # not the tail of a word or of another number
    r"(?P<sign>[-−+])?\s?\$?\s?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.]))?"
    r"(?P<pct>\s?%)?"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}|\\[dt]?frac(\d)(\d)")


def _canonical_number(match: re.Match[str]) -> str | None:
    whole, frac = match.group("int"), match.group("frac")
    if whole is None and frac is None:
        return None
    sign = "-" if match.group("sign") in ("-", "−") else ""
    number = (whole or "0").replace(",", "") + (frac or "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")  # "18.00" -> "18", "3.50" -> "3.5"
    number = number.lstrip("0") or "0"
    if number.startswith("."):
        number = "0" + number
    if match.group("den") and frac is None:
        number += "/" + match.group("den")
    return sign + number if number != "0" else number


def _numbers(text: str) -> list[str]:
    text = _LATEX_FRAC_RE.sub(lambda m: f"{m.group(1) or m.group(3)}/{m.group(2) or m.group(4)}", text)
    found = []
    for match in _NUMBER_RE.finditer(text):
        number = _canonical_number(match)
        if number is not None:
            found.append(number)
    return found


def extract_number(text: str) -> str | None:
    """The final number of a reply, canonicalized (``"$1,000.50"`` -> ``"1000.5"``), or None.

    The number is taken from the extracted answer when it holds one, else it is the last number
    of the whole reply. Thousands separators, ``$`` and ``%`` are dropped, ``-3`` keeps its sign,
    ``1/2`` and ``\\frac{1}{2}`` give ``"1/2"``. Numbers in an invented "Output:" block are kept:
    such a block usually repeats the model's own answer, so skipping it did not help.

    >>> extract_number("She pays $1,000.50 in total.")
    '1000.5'
    """
    if not text:
        return None
    in_answer = _numbers(extract_answer(text))
    if in_answer:
        return in_answer[-1]
    everywhere = _numbers(text)
    return everywhere[-1] if everywhere else None


# --------------------------------------------------------------------------- labels

_NEGATION_RE = re.compile(r"(?i)(?:\bnot|\bno|n't|\bnever|\bneither|\bnor)\s+(?:be\s+|been\s+|fully\s+)?$")


def _label_patterns(label: str) -> list[str]:
    """Regexes (case-insensitive) for the ways a model may write ``label``."""
    words = re.findall(r"[A-Za-z0-9]+", label)
    if not words:
        return [re.escape(label)]
    sep = r"[\s_\-]+"
    exact = sep.join(re.escape(w) for w in words)
    patterns = [rf"\b{exact}\b"]
    last = words[-1]
    if len(last) >= 5:  # inflections: SUPPORTS -> supported/support, INFO -> information
        stem = last[: max(4, len(last) - 2)]
        patterns.append(r"\b" + sep.join([*map(re.escape, words[:-1]), re.escape(stem) + r"[a-z]*"]) + r"\b")
    elif last.lower() == "info":
        patterns.append(r"\b" + sep.join([*map(re.escape, words[:-1]), "information"]) + r"\b")
    if len(words) >= 3:  # NOT ENOUGH INFO -> NEI
        patterns.append(r"\b" + "".join(w[0] for w in words) + r"\b")
    return patterns


def _label_hits(text: str, labels: Sequence[str]) -> list[tuple[int, int, str]]:
    hits = []
    for label in labels:
        # one-letter labels (multiple choice "A".."D") must not match the article "a"
        flags = 0 if len(label.strip()) == 1 else re.I
        for pattern in _label_patterns(label):
            for m in re.finditer(pattern, text, flags=flags):
                negated = _NEGATION_RE.search(text[: m.start()]) and not re.match(r"(?i)not\b", label.strip())
                if not negated:
                    hits.append((m.start(), m.end(), label))
    # a hit inside a longer hit ("INFO" inside "NOT ENOUGH INFO") is not a mention of its own
    return [h for h in hits if not any(o[0] <= h[0] and h[1] <= o[1] and o[1] - o[0] > h[1] - h[0] for o in hits)]


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The label of ``labels`` (returned exactly as given) that the reply settles on, or None.

    Variants count: case, ``_``/``-``/space, inflections (``supported`` for ``SUPPORTS``),
    ``information`` for ``INFO`` and initials (``NEI``) for labels of three or more words. A
    negated mention ("not supported") is ignored. The answer part of the reply is searched first,
    then the whole reply; the label mentioned last wins.

    >>> extract_label("Answer: Not enough information.", ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"])
    'NOT ENOUGH INFO'
    """
    if not labels:
        raise ValueError("extract_label needs a non-empty list of labels")
    if not text:
        return None
    answer = extract_answer(text)
    for label in labels:  # the whole answer is one label: no guessing needed
        if answer.strip().lower() == label.strip().lower():
            return label
    for part in (answer, text):
        hits = _label_hits(part, labels)
        if hits:
            return max(hits, key=lambda h: (h[0], h[1] - h[0]))[2]
    return None


# --------------------------------------------------------------------------- fenced blocks, code, json

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block; an unclosed last fence runs to the end."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]


def extract_code(text: str) -> str:
    """The Python code of a reply: the largest ```python block (the last on ties), else the largest
    untagged block, else the whole reply.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nOutput:\\n```\\n1\\n```")
    'def f():\\n    return 1'
    """
    blocks = _fenced_blocks(text or "")
    for wanted in ({"python", "py", "python3"}, {""}):
        bodies = [body for lang, body in blocks if lang in wanted and body.strip()]
        if bodies:
            best = max(range(len(bodies)), key=lambda i: (len(bodies[i].strip()), i))
            return bodies[best].strip("\n").rstrip()
    return (text or "").strip()


def _loads_lenient(candidate: str) -> Any:
    """json.loads, then without trailing commas, then as a Python literal (single quotes, True)."""
    try:
        return json.loads(candidate)
    except ValueError:
        pass
    try:
        return json.loads(re.sub(r",\s*([}\]])", r"\1", candidate))
    except ValueError:
        pass
    try:
        value = ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(value, (dict, list)):
        raise ValueError("not a JSON object")
    try:
        return json.loads(json.dumps(value))  # sets, bytes or tuple keys are not JSON
    except (TypeError, ValueError):
        raise ValueError("not JSON") from None


def _balanced_spans(text: str) -> list[str]:
    """Top-level ``{...}`` / ``[...]`` substrings, skipping brackets inside string literals."""
    spans, stack, start, quote = [], [], 0, ""
    pairs = {"{": "}", "[": "]"}
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif stack and ch in "\"'":
            quote = ch
        elif ch in pairs:
            if not stack:
                start = i
            stack.append(pairs[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                spans.append(text[start : i + 1])
        elif stack and ch in "}]":
            stack = []  # mismatched: give up on this span
        i += 1
    return spans


def extract_json(text: str) -> Any:
    """The JSON object (or array) in a reply, which may be fenced or surrounded by prose.

    Fenced ```json / untagged blocks are tried last to first, then bracketed spans of the text,
    preferring objects over arrays and later ones over earlier ones. Trailing commas and Python
    literals (single quotes, True/None) are accepted. Raises ValueError when nothing parses.

    >>> extract_json('Sure! ```json\\n{"answer": 42,}\\n```')
    {'answer': 42}
    """
    text = text or ""
    for lang, body in reversed(_fenced_blocks(text)):
        if lang in ("json", "", "jsonc", "javascript", "js"):
            try:
                value = _loads_lenient(body.strip())
                if isinstance(value, (dict, list)):
                    return value
            except ValueError:
                continue
    parsed = []
    for span in _balanced_spans(text):
        try:
            parsed.append(_loads_lenient(span))
        except ValueError:
            continue
    objects = [v for v in parsed if isinstance(v, dict)]
    if objects or parsed:
        return (objects or parsed)[-1]
    preview = " ".join(text.split())[:80]
    raise ValueError(f"no JSON object found in the reply (it starts: {preview!r})")


# --------------------------------------------------------------------------- dispatch


def _extract_regex(text: str, pattern: str | re.Pattern[str] | None) -> str | None:
    if pattern is None:
        raise ValueError("extraction rule 'regex' needs a pattern")
    try:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    except re.error as exc:
        raise ValueError(f"invalid regex pattern {pattern!r}: {exc}") from None
    matches = list(compiled.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if compiled.groups else last.group(0)


def _extract_label_rule(text: str, labels: Sequence[str] | None) -> str | None:
    if not labels:
        raise ValueError("extraction rule 'label' needs a non-empty list of labels")
    return extract_label(text, labels)


_RULES: dict[str, Callable[..., Any]] = {
    "text": lambda text, **_: text.strip(),
    "answer": lambda text, **_: extract_answer(text),
    # a model asked to box that forgot to still usually gave an answer: fall back to it
    "boxed": lambda text, **_: extract_boxed(text) or extract_answer(text),
    "number": lambda text, **_: extract_number(text),
    "label": lambda text, labels=None, **_: _extract_label_rule(text, labels),
    "json": lambda text, **_: extract_json(text),
    "code": lambda text, **_: extract_code(text),
    "regex": lambda text, pattern=None, **_: _extract_regex(text, pattern),
    # the whole reply (a draft's full solution for a verifier); its prompt asks for a final line
    "reasoning": lambda text, **_: text.strip(),
}

#: the rule names accepted by :func:`apply_extraction`
EXTRACTION_RULES: tuple[str, ...] = tuple(_RULES)


def apply_extraction(
    rule: str,
    text: str,
    *,
    labels: Sequence[str] | None = None,
    pattern: str | re.Pattern[str] | None = None,
) -> Any:
    """Apply the extraction rule named ``rule`` to a raw reply.

    Rules: ``text`` (stripped reply), ``answer``, ``boxed`` (falls back to ``answer`` when nothing is
    boxed), ``number`` (None when there is none), ``label`` (needs ``labels``; None when no label is
    found), ``json`` (raises ValueError when none), ``code``, ``regex`` (needs ``pattern``; first group
    of the last match, or the whole match if the pattern has no group; None when no match),
    ``reasoning`` (the whole stripped reply: a draft solution a later step reads in full).

    >>> apply_extraction("regex", "id=3, id=7", pattern=r"id=(\\d+)")
    '7'
    """
    if rule not in _RULES:
        raise ValueError(f"unknown extraction rule {rule!r}; valid rules: {', '.join(_RULES)}")
    return _RULES[rule](text if isinstance(text, str) else str(text or ""), labels=labels, pattern=pattern)
