"""Tools a workflow can call: ``python`` (sandboxed code), ``calculator`` and ``retrieve`` (BM25).

>>> registry = default_registry(python={"timeout_s": 5})
>>> sorted(registry.names())
['calculator', 'python', 'retrieve']
"""

from __future__ import annotations

from typing import Any

from flowbot.errors import FlowBotError
from flowbot.tools.base import Tool, ToolError, ToolRegistry, ToolResult
from flowbot.tools.calculator import CalculatorTool
from flowbot.tools.python_exec import PythonTool
from flowbot.tools.retrieval import RetrieveTool
from flowbot.tools.sandbox import SandboxResult, SandboxUnavailable, run_python, sandbox_info, sandbox_levels

__all__ = [
    "Tool", "ToolError", "ToolRegistry", "ToolResult", "default_registry",
    "PythonTool", "CalculatorTool", "RetrieveTool",
    "run_python", "sandbox_info", "sandbox_levels", "SandboxResult", "SandboxUnavailable",
]

_FACTORIES = {"python": PythonTool, "calculator": CalculatorTool, "retrieve": RetrieveTool}


def default_registry(**config: dict[str, Any]) -> ToolRegistry:
    """A registry with ``python``, ``calculator`` and ``retrieve``.

    Each keyword is a tool name mapped to that tool's constructor options, e.g.
    ``default_registry(python={"timeout_s": 5, "memory_mb": 256}, retrieve={"k": 5})``.
    """
    unknown = set(config) - set(_FACTORIES)
    if unknown:
        raise FlowBotError(f"default_registry: unknown tool(s) {sorted(unknown)} (known: {sorted(_FACTORIES)})")
    tools = []
    for name, factory in _FACTORIES.items():
        options = config.get(name) or {}
        if not isinstance(options, dict):
            raise FlowBotError(f"default_registry: options for {name!r} must be a dict, got {type(options).__name__}")
        try:
            tools.append(factory(**options))
        except TypeError as exc:
            raise FlowBotError(f"default_registry: bad options for {name!r}: {exc}") from None
    return ToolRegistry(tools)
