"""What a tool is: a named async function of keyword arguments that returns text.

Tools are used two ways: a ``tool`` node calls one with arguments bound to fields, and an ``llm``
node allowed to use tools (ReAct style) calls them by name with one text argument.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


class ToolError(Exception):
    """The tool could not do what was asked (bad arguments, code error, timeout)."""


@dataclass
class ToolResult:
    output: str  # what the workflow sees
    ok: bool = True
    details: dict[str, Any] = field(default_factory=dict)  # e.g. stderr, exit code, scores


class Tool(abc.ABC):
    name: str
    description: str  # one line, shown to LLMs that may call the tool
    #: the argument an LLM supplies when it calls the tool by name with a single text input
    primary_arg: str = "input"
    #: the other arguments a tool node may bind to fields (configuration comes from node params)
    extra_args: tuple[str, ...] = ()

    @abc.abstractmethod
    async def call(self, **kwargs: Any) -> ToolResult:
        """Run the tool. Raise ToolError for bad arguments; never hang (tools own their timeouts)."""


class ToolRegistry:
    """Name → tool. Build one per run with :func:`flowbot.tools.default_registry`."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools or []:
            self.register(t)

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise ToolError(f"unknown tool {name!r} (known: {known})") from None

    def names(self) -> set[str]:
        return set(self._tools)

    def signatures(self) -> dict[str, list[str]]:
        """Tool name -> argument names, the primary one first (what workflow validation checks)."""
        return {name: [t.primary_arg, *t.extra_args] for name, t in self._tools.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._tools
