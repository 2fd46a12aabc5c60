"""Runs a workflow on one input. Independent nodes run concurrently; every node is traced.

    >>> import asyncio
    >>> from flowbot.graph import LLMNode, Sketch, Workflow
    >>> from flowbot.lm import LMClient
    >>> from flowbot.testing import ScriptedLM
    >>> wf = Workflow(sketch=Sketch(inputs=["q"], outputs=["a"],
    ...                             nodes=[LLMNode(id="ans", reads=["q"], writes="a")]))
    >>> trace = asyncio.run(Executor(LMClient(ScriptedLM(default="42"))).run(wf, {"q": "6*7?"}))
    >>> trace.outputs
    {'a': '42'}

Semantics: a node runs when all its upstream nodes finished. A node gated by a branch runs only when
the branch chose its route; a node whose input is missing (skipped or failed upstream) is skipped,
except merges, which combine whatever inputs are present. A failing node is recorded in the trace
and never raises; only a used-up budget (``BudgetExceeded``) and a permanent LM error (a bad key,
an unknown model: ``LMPermanentError``, which no other input would avoid) stop the run.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any, Callable

from flowbot.graph.nodes import BranchNode, LLMNode, MergeNode, NodeParams, ToolNode
from flowbot.graph.sketch import Workflow
from flowbot.lm.base import BudgetExceeded, Completion, LMPermanentError
from flowbot.lm.client import LMClient
from flowbot.runtime import prompts
from flowbot.runtime.actions import parse_action
from flowbot.runtime.trace import NodeRun, Trace
from flowbot.runtime.tracing import Tracer, active_tracer, end_span, start_span
from flowbot.scoring.extract import apply_extraction, extract_answer
from flowbot.scoring.values import format_value
from flowbot.tools.base import ToolError, ToolRegistry

_MISSING = object()


class Executor:
    """Runs workflows with one task LM (and optionally other models by name) and a tool registry.

    ``tracer`` receives a span per workflow run and per node run (see :mod:`flowbot.runtime.tracing`);
    without one, the tracer made active with ``use_tracer`` is used, if any."""

    def __init__(
        self,
        lm: LMClient,
        *,
        tools: ToolRegistry | None = None,
        models: Callable[[str], LMClient] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.lm = lm
        self.tools = tools or ToolRegistry()
        self._models = models
        self.tracer = tracer

    def client_for(self, params: NodeParams) -> LMClient:
        if params.model and self._models is not None and params.model != self.lm.model:
            return self._models(params.model)
        return self.lm

    async def run(self, workflow: Workflow, inputs: dict[str, Any]) -> Trace:
        sketch = workflow.sketch
        trace = Trace(inputs=dict(inputs))
        start = time.perf_counter()
        values: dict[str, Any] = {f: inputs[f] for f in sketch.inputs if f in inputs}
        missing_inputs = [f for f in sketch.inputs if f not in inputs]
        if missing_inputs:
            trace.error = f"missing input field(s): {', '.join(missing_inputs)}"
        gates = sketch.gates()
        tasks: dict[str, asyncio.Task[None]] = {}
        tracer = self.tracer or active_tracer()
        root = start_span(tracer, workflow.name or "workflow", "workflow", trace.inputs,
                          attributes={"workflow": workflow.name, "nodes": len(sketch.nodes)})

        async def run_node(node: Any, upstream: list[asyncio.Task[None]]) -> None:
            if upstream:
                await asyncio.gather(*upstream)
            record = NodeRun(node_id=node.id, kind=node.kind)
            gate = gates.get(node.id)
            if gate is not None and values.get(sketch.node(gate[0]).writes, _MISSING) != gate[1]:
                record.skipped = True
                trace.nodes[node.id] = record
                return
            present = {f: values[f] for f in node.reads if f in values}
            absent = [f for f in node.reads if f not in values]
            if absent and not (isinstance(node, MergeNode) and present):
                record.skipped = True
                record.error = f"input {', '.join(absent)} missing (upstream failed or skipped)"
                trace.nodes[node.id] = record
                return
            record.inputs = present
            span = start_span(tracer, node.id, node.kind, present, parent=root,
                              attributes=self._span_attributes(workflow, node)) if tracer else None
            t0 = time.perf_counter()
            stopped: str | None = None
            try:
                output = await self._run_node(workflow, node, present, record, values)
                values[node.writes] = output
                record.output = output
            except (BudgetExceeded, LMPermanentError) as exc:
                stopped = f"{type(exc).__name__}: {exc}"
                raise
            except Exception as exc:  # any node failure is data for the trace, never a crash
                record.error = f"{type(exc).__name__}: {exc}"
            finally:
                record.latency_s = time.perf_counter() - t0
                trace.nodes[node.id] = record
                if span is not None:
                    end_span(span, {node.writes: record.output}, _usage_attributes(record), record.error or stopped)

        for node in sketch.topological_order():
            ups = [tasks[u] for u in sketch.upstream(node)]
            tasks[node.id] = asyncio.ensure_future(run_node(node, ups))
        try:
            await asyncio.gather(*tasks.values())
        except (BudgetExceeded, LMPermanentError) as exc:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            end_span(root, None, {"latency_s": time.perf_counter() - start}, f"{type(exc).__name__}: {exc}")
            raise
        trace.outputs = {f: values.get(f) for f in sketch.outputs}
        if trace.error is None:
            failed = [r for r in trace.nodes.values() if r.error and not r.skipped]
            if failed:
                trace.error = f"node '{failed[0].node_id}' failed: {failed[0].error}"
            elif any(v is None for v in trace.outputs.values()):
                trace.error = "no value for output field(s): " + ", ".join(
                    f for f, v in trace.outputs.items() if v is None)
        trace.latency_s = time.perf_counter() - start
        if root is not None:
            usage = trace.usage
            end_span(root, dict(trace.outputs), {"latency_s": round(trace.latency_s, 4), "calls": trace.calls,
                                                 "prompt_tokens": usage.prompt_tokens,
                                                 "completion_tokens": usage.completion_tokens,
                                                 "cost_usd": usage.cost_usd}, trace.error)
        return trace

    def _span_attributes(self, workflow: Workflow, node: Any) -> dict[str, Any]:
        if isinstance(node, ToolNode):
            return {"node.kind": node.kind, "tool": node.tool}
        attributes: dict[str, Any] = {"node.kind": node.kind}
        if isinstance(node, (LLMNode, BranchNode, MergeNode)):
            params = workflow.params[node.id]
            attributes["model"] = self.client_for(params).model
            attributes["temperature"] = params.temperature
        return attributes

    # -- node kinds ----------------------------------------------------------------------
    async def _run_node(self, wf: Workflow, node: Any, inputs: dict[str, Any], record: NodeRun,
                        values: dict[str, Any]) -> Any:
        params = wf.params[node.id]
        if isinstance(node, LLMNode):
            return await self._run_llm(node, params, inputs, record, values)
        if isinstance(node, ToolNode):
            return await self._run_tool(node, params, inputs, record)
        if isinstance(node, BranchNode):
            return await self._run_branch(node, params, inputs, record)
        if isinstance(node, MergeNode):
            # a selector judges the candidates against the task's own inputs (the question, the passage)
            task_inputs = {f: values[f] for f in wf.sketch.inputs if f in values}
            return await self._run_merge(node, params, inputs, record, task_inputs)
        raise TypeError(f"unknown node kind {node.kind!r}")  # pragma: no cover

    async def _complete(self, params: NodeParams, messages: list[dict[str, str]], record: NodeRun,
                        stop: list[str] | None = None) -> str:
        client = self.client_for(params)
        seed = None if params.seed is None else (client.default_seed or 0) + params.seed
        result: Completion = await client.complete(
            messages, temperature=params.temperature, max_tokens=params.max_tokens, seed=seed, stop=stop
        )
        record.messages = messages
        record.raw.append(result.text)
        record.usage = record.usage + result.usage
        record.calls += 1
        record.cached_calls += int(all(result.cached))
        return result.text

    async def _run_llm(self, node: LLMNode, params: NodeParams, inputs: dict[str, Any], record: NodeRun,
                       values: dict[str, Any]) -> Any:
        tool_names = [t for t in params.tools if t in self.tools]
        descriptions = {t: self.tools.get(t).description for t in tool_names}
        messages = prompts.llm_messages(node, params, inputs, descriptions or None)
        if not tool_names:
            reply = await self._complete(params, messages, record)
        else:
            reply = await self._react_loop(params, messages, values, tool_names, record)
        fmt = node.output
        return apply_extraction(fmt.extract, reply, labels=fmt.labels, pattern=fmt.pattern)

    async def _react_loop(self, params: NodeParams, messages: list[dict[str, str]], values: dict[str, Any],
                          tool_names: list[str], record: NodeRun) -> str:
        """Think-act-observe: the model may call tools by name until it answers or runs out of steps
        (the last observation asks for the final answer, and the reply to it, made without the stop
        sequence, is the answer). A tool that fails, or one this step may not call, is observed as
        an error, so the model can go on. Extra tool arguments come from workflow inputs named in
        ``config["tool_args"]`` (e.g. the passages a retrieval tool searches, which the prompt itself
        does not show)."""
        bindings: dict[str, dict[str, str]] = params.config.get("tool_args", {})
        for step in range(params.max_tool_steps + 1):
            stop = ["Observation:"] if step < params.max_tool_steps else None
            reply = await self._complete(params, messages, record, stop=stop)
            action = parse_action(reply)
            if action is None or step == params.max_tool_steps:
                return reply
            name, arg = action.tool, action.input
            try:
                if name not in tool_names:
                    raise ToolError(f"this step cannot call {name!r}; it may call {', '.join(tool_names)}")
                if arg is None:
                    raise ToolError(f"the call gave no input; write it on one line as Action: {name}[<input>]")
                tool = self.tools.get(name)
                kwargs = {tool.primary_arg: arg}
                kwargs.update({a: values.get(f) for a, f in bindings.get(name, {}).items()})
                result = await tool.call(**kwargs)
                observation = result.output
            except ToolError as exc:
                observation = f"error: {exc}"
            record.steps.append({"tool": name, "input": arg, "observation": observation})
            last = step + 1 == params.max_tool_steps
            messages = messages + [
                {"role": "assistant", "content": reply[: action.end]},
                {"role": "user", "content": prompts.observation_text(observation, last=last)},
            ]
        return reply  # pragma: no cover - the loop always returns

    async def _run_tool(self, node: ToolNode, params: NodeParams, inputs: dict[str, Any], record: NodeRun) -> Any:
        tool = self.tools.get(node.tool)
        kwargs = {arg: inputs.get(f) for arg, f in node.args.items()}
        kwargs.update(params.config)
        result = await tool.call(**kwargs)
        record.steps.append({"tool": node.tool, "ok": result.ok, "details": result.details})
        return result.output

    async def _run_branch(self, node: BranchNode, params: NodeParams, inputs: dict[str, Any], record: NodeRun) -> str:
        if node.mode == "rule":
            for rule in node.rules:
                if _rule_matches(rule.op, inputs.get(rule.field), rule.value):
                    return rule.label
            return node.default
        reply = await self._complete(params, prompts.branch_messages(node, params, inputs), record)
        from flowbot.scoring.extract import extract_label

        label = extract_label(reply, list(node.routes))
        return label if label in node.routes else node.default

    async def _run_merge(self, node: MergeNode, params: NodeParams, inputs: dict[str, Any], record: NodeRun,
                         task_inputs: dict[str, Any]) -> Any:
        candidates = [inputs[f] for f in node.reads if f in inputs and inputs[f] is not None]
        if not candidates:
            raise ValueError("no input to merge")
        if node.strategy == "first":
            return candidates[0]
        if node.strategy == "concat":
            return "\n\n".join(format_value(c) for c in candidates)
        if node.strategy == "majority":
            return majority_vote(candidates)
        # select: an LLM picks the best candidate by number
        reply = await self._complete(params, prompts.select_messages(node, params, candidates, task_inputs), record)
        match = re.search(r"\d+", extract_answer(reply))
        index = int(match.group()) - 1 if match else 0
        return candidates[index] if 0 <= index < len(candidates) else candidates[0]


def _usage_attributes(record: NodeRun) -> dict[str, Any]:
    """What a node span reports when it ends: tokens, calls (and how many were cached), latency."""
    return {"prompt_tokens": record.usage.prompt_tokens, "completion_tokens": record.usage.completion_tokens,
            "cost_usd": record.usage.cost_usd, "calls": record.calls, "cached_calls": record.cached_calls,
            "latency_s": round(record.latency_s, 4), "tool_steps": len(record.steps)}


def _rule_matches(op: str, value: Any, target: Any) -> bool:
    text = "" if value is None else format_value(value)
    if op == "nonempty":
        return bool(text.strip())
    if op == "empty":
        return not text.strip()
    if op == "contains":
        return str(target).lower() in text.lower()
    if op == "equals":
        return text.strip().lower() == str(target).strip().lower()
    if op == "regex":
        return re.search(str(target), text) is not None
    try:
        number = float(text.strip().replace(",", ""))
    except ValueError:
        return False
    return number > float(target) if op == "gt" else number < float(target)


def normalize_vote(value: Any) -> str:
    """The key a majority vote counts: numbers by value, text case- and space-insensitively."""
    text = format_value(value).strip().rstrip(".").strip()
    try:
        number = float(text.replace(",", "").replace("$", ""))
        return repr(round(number, 9))
    except ValueError:
        return " ".join(text.lower().split())


def majority_vote(candidates: list[Any]) -> Any:
    """The most common candidate (ties go to the earliest); returns the first original spelling."""
    keys = [normalize_vote(c) for c in candidates]
    counts = Counter(keys)
    best = max(counts.values())
    for c, k in zip(candidates, keys):
        if counts[k] == best:
            return c
    return candidates[0]  # pragma: no cover
