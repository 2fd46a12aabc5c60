"""Turning user errors into one clear line (and exit code 2) instead of a traceback: a
:class:`~flowbot.errors.FlowBotError` (bad input or a bad setting; the message names the file, line,
field or option) and an :class:`~flowbot.lm.base.LMError` that reaches the command (a bad key, an
unknown model, a server that stays down: the message says what to do). Anything else is a bug and
keeps its traceback. Set FLOWBOT_DEBUG=1 to see the traceback of a user error too."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console
from rich.text import Text

from flowbot.errors import FlowBotError
from flowbot.lm.base import LMError

#: a bad option value a command finds itself (typer's own usage errors keep typer's format)
_USAGE_ERRORS = (typer.BadParameter,)

#: errors that describe bad input, a bad setting or an LM the user must fix: one message, no traceback
USER_ERRORS = (FlowBotError, LMError)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("FLOWBOT_DEBUG"):
                raise
            _one_line(str(exc))
            raise typer.Exit(2) from None
        except _USAGE_ERRORS as exc:  # a bad option found inside a command: one line too
            if os.environ.get("FLOWBOT_DEBUG"):
                raise
            _one_line(exc.format_message())
            raise typer.Exit(2) from None

    return wrapper


def _one_line(message: str) -> None:
    text = " ".join(message.split())  # a message is one line, whatever it quotes
    # Text, not markup: a message may quote brackets, e.g. "unknown key(s) ['metrc']"
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error:", "bold red"), " " + text), highlight=False)
