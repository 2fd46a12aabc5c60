"""Generic HTML for FlowBot's pages: escaping, tables, figures, folding sections, word diffs,
numbers, money and times as text, and hiding secrets in settings. Nothing here knows a run; the
sections of the report that use these are in :mod:`flowbot.report.html`.

    >>> table(["a", "b"], [["1", num_td("2")]])
    '<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td class="num">2</td></tr></table>'
    >>> word_diff("Solve it.", "Solve it step by step.")
    'Solve <del>it.</del><ins>it step by step.</ins>'
    >>> money(0.00123)
    '$0.0012'
"""

from __future__ import annotations

import base64
import datetime as _dt
import difflib
import html
import math
import re
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

from flowbot.report.rundata import _num

SECRET_KEY = re.compile(r"api[_-]?key|secret|password|passwd|authorization|bearer|credential", re.I)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def score_text(value: Any) -> str:
    return "—" if value is None else f"{_num(value):.3f}"


def signed_text(value: Any) -> str:
    return "—" if value is None else f"{_num(value):+.3f}"


def money(value: float) -> str:
    """Dollars with two significant digits below a cent (per-example costs are tiny)."""
    if value == 0 or abs(value) >= 0.01:
        return f"${value:,.2f}"
    decimals = 1 - math.floor(math.log10(abs(value)))
    return f"${value:.{decimals}f}"


def cost_text(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    return money(_num(value)) if unit == "usd" else f"{_num(value):,.0f} tok"


def img(png: bytes, alt: str) -> str:
    # the size up front (from the PNG header), so the page does not move while images decode and a
    # link to a section lands on it
    size = ""
    if png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) >= 24:
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        size = f' width="{width}" height="{height}"'
    return f'<img alt="{esc(alt)}"{size} src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def figure(png: bytes, alt: str, caption: str) -> str:
    return f"<figure>{img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "",
           row_class: Callable[[int], str] | None = None) -> str:
    """``headers`` are plain text; cells are HTML already (escape them when building the row)."""
    def attr(name: str) -> str:
        return f' class="{esc(name)}"' if name else ""

    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        # escaped text never starts with "<", so only cells built by num_td start with "<td"
        cells = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row)
        body.append(f"<tr{attr(row_class(i) if row_class else '')}>{cells}</tr>")
    return f"<table{attr(cls)}><tr>{head}</tr>{''.join(body)}</table>"


def num_td(text: str) -> str:
    return f'<td class="num">{text}</td>'


def kv_table(pairs: Iterable[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def details(summary: str, body_html: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body_html}</details>"


def tick(flag: bool) -> str:
    return '<span class="ok">yes</span>' if flag else '<span class="muted">no</span>'


def redact(value: Any) -> Any:
    """Settings with secret-looking keys hidden, and user:password stripped from URLs."""
    if isinstance(value, dict):
        return {k: "(hidden)" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.username or parts.password:
            return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return value


def word_diff(old: str, new: str) -> str:
    """HTML of a word-level diff: deleted words in <del>, inserted words in <ins> (all escaped).

    Changes separated only by whitespace are shown as one change, so a rewritten sentence reads as
    "old sentence / new sentence" rather than alternating single words.
    """
    a, b = re.findall(r"\s+|\S+", old or ""), re.findall(r"\s+|\S+", new or "")
    chunks: list[list[str]] = []  # [kind, old text, new text]
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old_text, new_text = "".join(a[i1:i2]), "".join(b[j1:j2])
        kind = "same" if op == "equal" else "change"
        if kind == "change" and len(chunks) >= 2 and chunks[-1][0] == "same" and not chunks[-1][1].strip() \
                and chunks[-2][0] == "change":
            gap = chunks.pop()[1]  # fold the whitespace between two changes into them
            chunks[-1][1] += gap + old_text
            chunks[-1][2] += gap + new_text
        elif chunks and chunks[-1][0] == kind == "change":
            chunks[-1][1] += old_text
            chunks[-1][2] += new_text
        else:
            chunks.append([kind, old_text, new_text])
    out = []
    for kind, old_text, new_text in chunks:
        if kind == "same":
            out.append(esc(old_text))
            continue
        if old_text:
            out.append(f"<del>{esc(old_text)}</del>")
        if new_text:
            out.append(f"<ins>{esc(new_text)}</ins>")
    return "".join(out)


def fmt_time(ts: Any) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def duration(seconds: Any) -> str:
    s = _num(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
