"""Printing a trace in the terminal (``flowbot run --trace``)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel

from flowbot.runtime.trace import Trace
from flowbot.scoring.values import format_value


def _short(value: object, limit: int = 600) -> str:
    text = format_value(value)
    return text if len(text) <= limit else text[:limit] + " …"


def print_trace(trace: Trace, console: Console) -> None:
    for run in trace.nodes.values():
        if run.skipped:
            console.print(f"[dim]{run.node_id} ({run.kind}): skipped{' — ' + run.error if run.error else ''}[/]")
            continue
        head = (f"{run.node_id} ({run.kind}) — {run.latency_s:.2f} s, {run.calls} call(s)"
                f"{' (cached)' if run.calls and run.cached_calls == run.calls else ''}, "
                f"{run.usage.prompt_tokens}+{run.usage.completion_tokens} tokens")
        body = [f"[bold]inputs[/]: {_short(run.inputs)}"]
        for step in run.steps:
            body.append(f"[bold]tool[/] {step.get('tool')}: {_short(step.get('input', ''), 200)} → "
                        f"{_short(step.get('observation', step.get('details', '')), 300)}")
        if run.raw:
            body.append(f"[bold]reply[/]: {_short(run.raw[-1])}")
        body.append(f"[bold]output[/]: {_short(run.output)}")
        if run.error:
            body.append(f"[red]error[/]: {run.error}")
        console.print(Panel("\n".join(body), title=head, title_align="left"), markup=True)
    console.print(f"total: {trace.latency_s:.2f} s, {trace.calls} call(s), {trace.usage.total_tokens} tokens")
