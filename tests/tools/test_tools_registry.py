"""default_registry builds the three tools and passes per-tool options through."""

from __future__ import annotations

import pytest

from flowbot.tools import CalculatorTool, PythonTool, RetrieveTool, ToolError, default_registry


def test_default_registry_has_the_three_tools_with_options() -> None:
    registry = default_registry(python={"timeout_s": 3, "memory_mb": 256}, retrieve={"k": 5})
    assert registry.names() == {"python", "calculator", "retrieve"}
    python, retrieve = registry.get("python"), registry.get("retrieve")
    assert isinstance(python, PythonTool) and python.timeout_s == 3 and python.memory_mb == 256
    assert isinstance(retrieve, RetrieveTool) and retrieve.k == 5
    assert isinstance(registry.get("calculator"), CalculatorTool)
    assert {registry.get(n).primary_arg for n in registry.names()} == {"code", "expression", "query"}
    with pytest.raises(ToolError, match="unknown tool"):
        registry.get("browser")


def test_default_registry_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown tool"):
        default_registry(shell={})
    with pytest.raises(ValueError, match="bad options for 'calculator'"):
        default_registry(calculator={"precision": 3})
    with pytest.raises(ValueError, match="must be a dict"):
        default_registry(python=5)  # type: ignore[arg-type]
