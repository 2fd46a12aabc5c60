"""Seed workflows: the single-call baselines (IO, CoT, CoT self-consistency, ReAct-style tool use)
that evaluation compares against and optimization starts from.

For a custom task they are built from its fields; for the benchmarks they also ship as IR files in
``flowbot/tasks/workflows/<benchmark>/<kind>.json`` (regenerate with
``python -m flowbot.tasks.seeds``; a test checks the files match this code).

    >>> from flowbot.tasks.seeds import build_baseline
    >>> wf = build_baseline("cot", inputs=["question"], output="answer", extract="number")
    >>> wf.sketch.nodes[0].output.extract
    'number'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowbot.errors import FlowBotError
from flowbot.graph.edits import Ensemble, apply_edit
from flowbot.graph.io import load_workflow, workflow_to_json
from flowbot.graph.nodes import LLMNode, NodeParams, OutputFormat
from flowbot.graph.sketch import Sketch, Workflow

KINDS = ("io", "cot", "sc", "react")
WORKFLOWS_DIR = Path(__file__).parent / "workflows"

IO_INSTRUCTION = "{task}Give the answer directly, without explanation."
COT_INSTRUCTION = "{task}Think step by step, showing your reasoning, then give the final answer."
REACT_INSTRUCTION = ("{task}Think step by step. When a tool would help (to look something up or to compute), "
                     "call it, read the observation, and continue; then give the final answer.")

#: which tools the ReAct baseline may call, by benchmark; closed-book tasks have no corpus to act on
REACT_TOOLS: dict[str, dict[str, Any]] = {
    "gsm8k": {"tools": ["python", "calculator"]},
    "math": {"tools": ["python"]},
    "hotpotqa": {"tools": ["retrieve"], "bindings": {"retrieve": {"passages": "context"}}, "hide": ["context"]},
    "drop": {"tools": ["python"]},
    "humaneval": {"tools": ["python"]},
    "mbpp": {"tools": ["python"]},
}


def build_baseline(
    kind: str,
    *,
    inputs: list[str],
    output: str,
    extract: str = "answer",
    labels: list[str] | None = None,
    description: str = "",
    samples: int = 5,
    tools: list[str] | None = None,
    tool_bindings: dict[str, dict[str, str]] | None = None,
    hidden_inputs: list[str] | None = None,
    name: str | None = None,
) -> Workflow:
    """A seed workflow reading ``inputs`` and writing ``output``.

    ``hidden_inputs`` are workflow inputs the ReAct node does not read directly but reaches through
    a tool (e.g. HotpotQA's paragraphs through retrieval)."""
    if kind not in KINDS:
        raise FlowBotError(f"unknown baseline {kind!r}; use one of {', '.join(KINDS)}")
    task = f"Task: {description.strip()}\n" if description else ""
    fmt = OutputFormat(extract=extract, labels=labels)
    reads = list(inputs)
    params = NodeParams(instruction=(IO_INSTRUCTION if kind == "io" else COT_INSTRUCTION).format(task=task))
    if kind == "react":
        if not tools:
            raise FlowBotError("the ReAct baseline needs tools")
        reads = [f for f in inputs if f not in (hidden_inputs or [])] or list(inputs)
        config = {"tool_args": tool_bindings} if tool_bindings else {}
        params = NodeParams(instruction=REACT_INSTRUCTION.format(task=task), tools=list(tools), config=config)
    node = LLMNode(id="solve", reads=reads, writes=output, output=fmt,
                   purpose="answers the task" if kind == "io" else "reasons step by step and answers")
    wf = Workflow(sketch=Sketch(inputs=list(inputs), outputs=[output], nodes=[node]), params={"solve": params},
                  name=name or kind)
    if kind == "sc":
        wf = apply_edit(wf, Ensemble(node_id="solve", k=samples, strategy="majority", temperature=0.7))
        wf.name = name or "sc"
    return wf


def benchmark_baseline(benchmark: Any, kind: str) -> Workflow:
    """The shipped IR file of a benchmark baseline (``benchmark`` is a Benchmark spec or its name)."""
    name = benchmark if isinstance(benchmark, str) else benchmark.name
    path = WORKFLOWS_DIR / name / f"{kind}.json"
    if not path.exists():
        available = sorted(p.stem for p in (WORKFLOWS_DIR / name).glob("*.json"))
        raise FlowBotError(f"no {kind!r} baseline for {name} (available: {', '.join(available) or 'none'})")
    return load_workflow(path)


def task_baseline(task: Any, kind: str = "cot") -> Workflow:
    """The seed for a task: a shipped file for a benchmark, else built from the task's fields."""
    if (WORKFLOWS_DIR / task.name / f"{kind}.json").exists():
        return benchmark_baseline(task.name, kind)
    if kind == "react":
        raise FlowBotError(f"no ReAct baseline for task {task.name!r}: give tools with a workflow file (--from)")
    return build_baseline(kind, inputs=task.inputs, output=task.output, extract=task.extract, labels=task.labels,
                          description=task.description, name=f"{task.name}-{kind}")


def parse_kind(name: str) -> tuple[str, int | None] | None:
    """``io``/``cot``/``sc``/``react`` → (kind, None); ``sc3``, ``sc7`` → ("sc", k); else None.

    >>> parse_kind("sc3"), parse_kind("cot"), parse_kind("best.json")
    (('sc', 3), ('cot', None), None)
    """
    if name in KINDS:
        return name, None
    if name.startswith("sc") and name[2:].isdigit() and 2 <= int(name[2:]) <= 16:
        return "sc", int(name[2:])
    return None


def self_consistency(cot: Workflow, k: int, name: str | None = None) -> Workflow:
    """``k`` samples of a one-node CoT workflow and a majority vote (the first sample is greedy, so
    it is the CoT call itself and shares its cache entry)."""
    node = cot.sketch.nodes[0]
    wf = apply_edit(cot, Ensemble(node_id=node.id, k=k, strategy="majority", temperature=0.7))
    wf.name = name or f"{cot.name.removesuffix('-cot')}-sc{k}"
    return wf


def generate_benchmark_files(out_dir: Path = WORKFLOWS_DIR) -> list[Path]:
    from flowbot.tasks.benchmarks import BENCHMARKS
    from flowbot.tasks.metric_specs import BUILTINS

    written = []
    for bench in BENCHMARKS.values():
        extract = BUILTINS[bench.metric][1] if bench.metric in BUILTINS else "code"
        output = bench.output or bench.targets[0]
        for kind in KINDS:
            react = REACT_TOOLS.get(bench.name)
            if kind == "react" and react is None:
                continue
            wf = build_baseline(
                kind, inputs=bench.inputs, output=output, extract=extract, labels=bench.labels,
                description=bench.description, tools=(react or {}).get("tools"),
                tool_bindings=(react or {}).get("bindings"), hidden_inputs=(react or {}).get("hide"),
                name=f"{bench.name}-{kind}",
            )
            path = out_dir / bench.name / f"{kind}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = workflow_to_json(wf)
            # the version stamp would make every release rewrite the files; files carry the schema only
            data = json.loads(text)
            data.pop("flowbot_version", None)
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    for p in generate_benchmark_files():
        print(p)
