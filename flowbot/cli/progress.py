"""Live output of ``flowbot optimize``: the estimate before, one line per event during, a summary after."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowbot.optim.events import (BudgetWarning, CandidateAccepted, CandidateEvaluated, CandidateRejected,
                                  InnerCandidate, LoggedEvent, OutputWarning, ProposalMade, SeedEvaluated,
                                  TestEvaluated, read_event)


def _score(value: float | None) -> str:
    return "not scored (budget)" if value is None else f"{value:.3f}"


def _num(value: Any, spec: str, missing: str = "?") -> str:
    """``value`` formatted with ``spec``; ``missing`` when it is not a number (an event that lacks it)."""
    return format(value, spec) if isinstance(value, (int, float)) else missing


class RunPrinter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.replayed = 0

    def print_estimate(self, estimate: Any, task: Any, prepared: Any) -> None:
        c = self.console
        c.print(f"[bold]{task.describe()}[/]")
        c.print(f"method {prepared.config.method}; budget {estimate.budget} (counts calls, tokens and dollars of "
                "all roles together)")
        table = Table(title="projected cost (planning figures)")
        for col in ("phase", "task calls", "optimizer calls", "judge calls", "tokens", "dollars"):
            table.add_column(col, justify="left" if col == "phase" else "right")
        rows = list(estimate.phases.items()) + [("total", estimate.total)]
        for name, p in rows:
            table.add_row(name, f"{p.task_calls:.0f}", f"{p.optimizer_calls:.0f}", f"{p.judge_calls:.0f}",
                          f"{p.tokens:,.0f}", "—" if p.usd is None else f"${p.usd:.3f}")
        c.print(table)
        for w in estimate.warnings:
            c.print(f"[bold yellow]warning:[/] {w}")
        for n in estimate.notes:
            c.print(f"[dim]{n}[/]")

    def on_event(self, event: dict[str, Any] | LoggedEvent) -> None:
        """One line for a run event (the dict a callback gets, or the event read with :func:`read_event`)."""
        rec = read_event(event)
        if rec.replayed:
            self.replayed += 1
            if self.replayed == 1:
                self.console.print("[dim]resuming: replaying the run's log and cache (nothing is paid twice)…[/]")
            return
        e = rec.event
        c = self.console
        if isinstance(e, SeedEvaluated):
            c.print(f"seed: validation score {_num(e.val_score, '.3f')}")
        elif isinstance(e, InnerCandidate):
            mark = "[green]accepted[/]" if e.accepted else f"[dim]rejected ({e.reason})[/]"
            score = f"val {_num(e.val_before, '.3f')} → {_num(e.val_after, '.3f')}" if e.val_after is not None else \
                f"minibatch {_num(e.minibatch_before, '.2f')} → {_num(e.minibatch_after, '.2f', 'not run')}"
            c.print(f"  inner step {e.step}: {e.change} of {e.node_id}: {score} {mark}")
        elif isinstance(e, ProposalMade):
            if e.status == "valid":
                critique = f" — {e.critique}" if e.critique else ""
                c.print(f"[bold]edit[/] from {e.parent}: {e.edit}{critique}")
            else:
                c.print(f"[dim]proposal from {e.parent} {e.status}: {e.error}[/]")
        elif isinstance(e, CandidateRejected):
            c.print(f"[dim]candidate from {e.parent} dropped ({e.edit or ''}): {e.reason or ''}[/]")
        elif isinstance(e, CandidateEvaluated):
            cost = f"${_num(e.cost_per_example, '.5f')}/ex" if e.cost_per_example else \
                f"{_num(e.tokens_per_example, '.0f')} tok/ex"
            race = e.race if isinstance(e.race, dict) else {}
            score = f"validation {_num(e.val_score, '.3f')}" if e.val_score is not None else \
                f"raced out after {race.get('evaluated')} of {race.get('total')} items"
            versus = f"; vs incumbent {race.get('wins')}W/{race.get('losses')}L" if race else ""
            c.print(f"[bold]{e.id}[/] ({e.edit}): {score}{versus}, {cost}, {e.nodes} nodes")
        elif isinstance(e, CandidateAccepted):
            c.print(f"  [green]incumbent: {e.id} ({_num(e.val_score, '.3f')}) — {e.reason}[/]")
        elif isinstance(e, BudgetWarning):
            c.print(f"[yellow]budget:[/] {e.message}")
        elif isinstance(e, OutputWarning):
            c.print(Text.assemble(("warning: ", "bold yellow"), str(e.message)))
        elif isinstance(e, TestEvaluated):
            c.print(f"test ({e.id}): {_num(e.score, '.3f')} on {e.n} examples")

    def print_result(self, result: Any) -> None:
        c = self.console
        s = result.summary
        c.print()
        c.print(f"[bold]best workflow[/] {result.best_id}: validation {_score(result.val_score)} "
                f"(seed {_score(result.seed_val_score)}) → {result.run_dir}/best.json")
        if s.get("test"):
            line = f"test {s['test']['score']:.3f} ± {s['test']['stderr']:.3f} on {s['test']['n']}"
            if s.get("seed_test"):
                line += f"; seed {s['seed_test']['score']:.3f}"
            gain = s.get("test_gain_vs_seed")
            if gain and gain.get("n"):
                line += (f"; paired gain {gain['mean']:+.3f} [{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}] "
                         f"({gain['wins']} won, {gain['losses']} lost)")
            c.print(line)
        table = Table(title="usage by role")
        for col in ("role", "calls", "replayed", "cached", "prompt tok", "completion tok", "dollars"):
            table.add_column(col, justify="right" if col != "role" else "left")
        for role, u in result.usage.items():
            table.add_row(role, str(u["calls"]), str(u.get("replayed_calls", 0)), str(u["cached_calls"]),
                          f"{u['prompt_tokens']:,}", f"{u['completion_tokens']:,}",
                          "—" if u["cost_usd"] is None else f"${u['cost_usd']:.4f}")
        c.print(table)
        phases = ", ".join(f"{k} {v['calls']} calls/{v['tokens']:,} tok" for k, v in result.phases.items())
        c.print(f"by phase (this session): {phases}")
        if len(result.front) > 1:
            c.print("Pareto front (score vs cost per example): " + "; ".join(
                f"{e['id']} {e['val_score']:.3f} @ {e['tokens_per_example']:.0f} tok" for e in result.front))
        props, race = s.get("proposals"), s.get("racing")
        if props:
            c.print("proposals: " + ", ".join(f"{k} {v}" for k, v in props.items()))
        if race and race.get("raced"):
            c.print(f"racing: {race['raced']} raced, {race['stopped_early']} stopped early, "
                    f"{race['calls_saved']:.0f} of {race['calls_full_evaluation']:.0f} calls saved")
        if result.stopped:
            c.print(f"[yellow]stopped:[/] {result.stopped}")
