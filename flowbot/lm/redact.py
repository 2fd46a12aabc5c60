"""Keeping API keys out of every error text, log line and artifact.

A key can reach an error message in more forms than the one in the environment: stripped of the
newline a shell or an ``.env`` file left on it, escaped by ``repr`` (a newline shown as ``\\n``),
escaped by JSON, percent-encoded in a URL, inside a ``b'...'`` bytes repr. :func:`key_forms`
lists them all and :func:`redact` replaces each one.

    >>> redact("Illegal header value b'Bearer sk-abc12345\\\\n'", ["sk-abc12345\\n"])
    "Illegal header value b'Bearer ***'"
    >>> clean_key("  sk-abc12345\\n", "OPENAI_API_KEY")
    'sk-abc12345'
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Iterable

from flowbot.lm.base import LMPermanentError

MASK = "***"
#: environment variables whose values are treated as secrets wherever they appear
SECRET_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_ACCESS_KEY_ID")
_MIN_LEN = 4  # a key given explicitly: shorter strings would blank out ordinary words
_MIN_ENV_LEN = 8  # a value found by its variable's name only: a stricter floor


class KeyFormatError(LMPermanentError):
    """An API key that cannot be sent in an HTTP header (a configuration error, never retried)."""


def key_forms(value: str, min_len: int = _MIN_LEN) -> set[str]:
    """Every form in which ``value`` may show up in error text (those long enough to matter)."""
    forms: set[str] = set()
    for v in {value, value.strip()}:
        forms |= {v, repr(v)[1:-1], json.dumps(v)[1:-1], urllib.parse.quote(v, safe=""),
                  repr(v.encode("utf-8", "backslashreplace"))[2:-1]}
    return {f for f in forms if len(f.strip()) >= min_len}


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every form of every secret replaced by ``***`` (longest forms first)."""
    forms: set[str] = set()
    for s in secrets:
        if s and len(s.strip()) >= _MIN_LEN:
            forms |= key_forms(s)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def environment_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """The values of key-like environment variables (``*_API_KEY``, ``*_TOKEN``, ...)."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if k.upper().endswith(SECRET_SUFFIXES) and len(v.strip()) >= _MIN_ENV_LEN]


def clean_key(value: str, variable: str) -> str:
    """The key stripped of surrounding whitespace; :class:`KeyFormatError` when what is left
    cannot be an HTTP header value (a line break, space or non-ASCII character inside it)."""
    key = value.strip()
    for i, ch in enumerate(key):
        if not 0x21 <= ord(ch) <= 0x7E:
            raise KeyFormatError(
                f"the API key in {variable} has a character an HTTP header cannot carry at position {i + 1} "
                "(a line break, a space or a non-ASCII character); fix the variable")
    return key
