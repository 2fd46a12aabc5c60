"""Turning known errors into one clear line (and exit code 2) instead of a traceback.
Set FLOWBOT_DEBUG=1 to see the traceback anyway."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console

from flowbot.errors import FlowBotError
from flowbot.graph.edits import EditError
from flowbot.graph.io import WorkflowFileError
from flowbot.graph.sketch import WorkflowValidationError
from flowbot.lm.base import LMError
from flowbot.optim.rundir import RunDirError
from flowbot.tasks.loaders import DataError

#: errors that describe bad input or a bad setting: shown as one message, no traceback
USER_ERRORS = (FlowBotError, DataError, WorkflowFileError, WorkflowValidationError, EditError, LMError, RunDirError,
               FileNotFoundError, ValueError)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("FLOWBOT_DEBUG"):
                raise
            Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper
