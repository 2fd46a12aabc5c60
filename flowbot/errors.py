"""The one base class of FlowBot's user-facing errors: bad input, a bad setting, a broken metric.

    >>> raise FlowBotError("budget must be positive, got -5", where="--budget-calls")
    Traceback (most recent call last):
    ...
    flowbot.errors.FlowBotError: --budget-calls: budget must be positive, got -5

Every user error of every layer derives from :class:`FlowBotError` (``DataError``,
``WorkflowFileError``, ``WorkflowValidationError``, ``EditError``, ``RunDirError``, ...). The
command line shows one as one line (no traceback) and exits non-zero; any other exception is a bug
and keeps its traceback. ``where`` names the place (a file and line, an option, a field) when the
message does not start with it already. This module imports nothing of flowbot, so every layer
may use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


class FlowBotError(ValueError):
    """A problem the user can fix, described in one line; ``where`` says where it is."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class MetricFailure(FlowBotError):
    """The metric itself is broken (it fails, or returns non-scores, on most examples)."""


class InputError(FlowBotError, TypeError):
    """A workflow was called without a field it reads (also a TypeError, like a missing argument)."""


def read_text_file(path: Path, what: str, error: Callable[[str], Exception] = FlowBotError) -> str:
    """The UTF-8 text of the file a user named (see :func:`utf8_text`); otherwise ``error`` with one
    line saying what is wrong: a directory (``what`` names the file expected), no such file, unreadable.

    >>> read_text_file(Path("nowhere.json"), "workflow file")
    Traceback (most recent call last):
    ...
    flowbot.errors.FlowBotError: nowhere.json: no such file
    """
    if path.is_dir():
        raise error(f"{path}: is a directory, not a {what}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return utf8_text(data, str(path), error)


def utf8_text(data: bytes, source: str, error: Callable[[str], Exception] = FlowBotError) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped, as editors on Windows write
    one); otherwise ``error`` with a message naming ``source``, the line and the column.

    >>> utf8_text(b"ok\\n\\xff", "d.jsonl")
    Traceback (most recent call last):
    ...
    flowbot.errors.FlowBotError: d.jsonl, line 2: not UTF-8 text (byte 0xff at column 1); save the file as UTF-8
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{source}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                    "save the file as UTF-8") from None
