"""The record of one workflow run: every node's inputs, messages, raw replies, output, cost, time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowbot.lm.base import Usage


@dataclass
class NodeRun:
    node_id: str
    kind: str
    inputs: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)  # the last LM request of the node
    raw: list[str] = field(default_factory=list)  # raw LM replies, in order
    steps: list[dict[str, Any]] = field(default_factory=list)  # tool calls (tool nodes, ReAct loops)
    output: Any = None
    usage: Usage = field(default_factory=Usage)  # nominal usage, cached or not
    calls: int = 0
    cached_calls: int = 0
    latency_s: float = 0.0
    error: str | None = None
    skipped: bool = False  # not run: a branch route not taken, or a missing upstream value

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "kind": self.kind,
            "inputs": self.inputs,
            "messages": self.messages,
            "raw": self.raw,
            "steps": self.steps,
            "output": self.output,
            "usage": self.usage.to_dict(),
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NodeRun":
        d = dict(d)
        d["usage"] = Usage.from_dict(d.get("usage"))
        return cls(**d)


@dataclass
class Trace:
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, NodeRun] = field(default_factory=dict)  # in completion order
    error: str | None = None
    latency_s: float = 0.0

    @property
    def usage(self) -> Usage:
        total = Usage()
        for run in self.nodes.values():
            total = total + run.usage
        return total

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "nodes": [r.to_dict() for r in self.nodes.values()],
            "error": self.error,
            "latency_s": round(self.latency_s, 4),
            "usage": self.usage.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        runs = [NodeRun.from_dict(r) for r in d.get("nodes", [])]
        return cls(
            inputs=d.get("inputs", {}),
            outputs=d.get("outputs", {}),
            nodes={r.node_id: r for r in runs},
            error=d.get("error"),
            latency_s=d.get("latency_s", 0.0),
        )
