"""``report.html``: one self-contained page about an optimization run (``flowbot report RUN_DIR``).

Inline CSS, plots and workflow pictures as inline PNG, no scripts and no external files, so it
opens offline and can be mailed around. Every piece of text that comes from the run (prompts, model
replies, edits) is HTML-escaped. Only the run directory's files are read: nothing from the
environment (API keys never reach the page).

    >>> from flowbot.report.html import write_report
    >>> write_report("runs/gsm8k-flowbot-1a2b3c4d")          # doctest: +SKIP
    PosixPath('runs/gsm8k-flowbot-1a2b3c4d/report.html')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from flowbot.graph.render import to_mermaid, to_text
from flowbot.graph.sketch import Workflow
from flowbot.optim.events import (BudgetWarning, CandidateProposed, CandidateRejected, EditRepaired, InnerCandidate,
                                  InnerPatience, LoggedEvent, OuterPatience, OutputWarning, Patience, ProposalMade,
                                  RunStarted, SeedEvaluated)
from flowbot.report import pictures, plots
from flowbot.report.markup import (cost_text, details, duration, esc, figure, fmt_time, kv_table, money, num_td,
                                   redact, score_text, signed_text, table, tick, word_diff)
from flowbot.report.rundata import RunData, _num, load_run, race_text, scored, usage_value

GRADIENT_CHARS = 160

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;margin:0;background:#f8fafc}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #e2e8f0;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}
nav{font-size:13px;margin:6px 0 18px}nav a{margin-right:14px;color:#1d4ed8;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 12px;background:#fff;font-size:13px}
th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:190px}
.muted{color:#64748b}.small{font-size:12px}.ok{color:#15803d;font-weight:600}.no{color:#b91c1c}
.warn{background:#fef3c7;border:1px solid #f59e0b;padding:6px 10px;border-radius:4px;margin:6px 0}
.best{background:#fefce8}
figure{margin:10px 0 18px;background:#fff;border:1px solid #e2e8f0;padding:8px;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#475569;max-width:760px;margin-top:4px}
.pics{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
pre{background:#f1f5f9;padding:8px 10px;border-radius:4px;white-space:pre-wrap;word-break:break-word;font-size:12px;margin:4px 0}
.diff{background:#fff;border:1px solid #e2e8f0;padding:8px 10px;border-radius:4px;white-space:pre-wrap;word-break:break-word;font-size:13px}
ins{background:#dcfce7;color:#14532d;text-decoration:none}del{background:#fee2e2;color:#7f1d1d}
details summary{cursor:pointer;color:#1d4ed8}
ul.tree{list-style:none;margin:2px 0;padding-left:20px;border-left:1px solid #cbd5e1}
ul.tree.root{border-left:none;padding-left:0}ul.tree li{margin:4px 0}
.tag{display:inline-block;font-size:11px;padding:0 5px;border-radius:8px;margin-left:4px;background:#e2e8f0;color:#334155}
.tag.front{background:#fee2e2;color:#991b1b}.tag.bestnow{background:#dcfce7;color:#166534}
.rejected{color:#94a3b8}.won{color:#15803d;font-weight:600}.lost{color:#b91c1c;font-weight:600}
.trace{border-left:3px solid #cbd5e1;padding-left:8px;margin:6px 0}.trace h4{margin:6px 0 2px;font-size:13px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}table.examples{width:100%}
"""
#: per-example view: rows shown in full (the rest are listed in test_examples.jsonl) and text kept per field
MAX_TIED_ROWS = 20
TRACE_CHARS = 1500


# -- sections ------------------------------------------------------------------------------------
def _header(run: RunData) -> str:
    s = run.summary or {}
    started = run.first(RunStarted)
    sizes = (started.sizes if started else None) or {}
    budget = s.get("budget") or {}
    limits = budget.get("limits") or (started.budget if started else None) or run.settings.get("budget") or "unlimited"
    spent = budget.get("spent") or {}
    unit = run.unit()
    spent_parts = []
    if spent:
        spent_parts = [f"{int(_num(spent.get('calls'))):,} calls", f"{int(_num(spent.get('tokens'))):,} tokens"]
        if unit == "usd":
            spent_parts.append(money(_num(spent.get("usd"))))
        if spent.get("seconds") is not None:
            spent_parts.append(f"{duration(spent.get('seconds'))} counted against the budget")
    stopped = run.stopped
    resumed = s.get("resumed", run.sessions > 1)
    times = [r.time for r in run.events if isinstance(r.time, (int, float))]
    objective = s.get("objective") or (run.settings.get("optimize") or {}).get("objective") or {}
    obj_text = "validation score" if objective.get("kind", "score") == "score" else \
        f"score − {objective.get('cost_weight')} × cost per example"
    pairs = [
        ("task", esc(run.task)),
        ("method", esc(run.method)),
        ("task model", esc(run.task_model)),
        ("optimizer model", esc(run.optimizer_model)),
        ("objective", esc(obj_text)),
        ("examples", esc(", ".join(f"{k} {v}" for k, v in sizes.items())) or "—"),
        ("budget", esc(limits)),
        ("spent", esc(", ".join(spent_parts)) or '<span class="muted">not recorded (no summary.json)</span>'),
        ("stopped", f'<span class="no">{esc(stopped)}</span>' if stopped else "no: the run finished its schedule"),
        ("sessions", esc(f"{run.sessions}" + (f" (resumed; {s.get('replayed_events', 0)} events replayed from "
                                               "the log in the last session)" if resumed else ""))),
        ("wall time", esc(f"{duration(s['wall_s'])} in the last session" if "wall_s" in s else "—")
         + (esc(f"; log from {fmt_time(times[0])} to {fmt_time(times[-1])}") if times else "")),
        ("run id", esc(run.run_id or "—")),
        ("run directory", esc(str(run.path))),
    ]
    out = [kv_table(pairs)]
    warnings = list(run.warnings) + [str(e.message) for e in run.of_type(OutputWarning)] + \
        [str(e.message) for e in run.of_type(BudgetWarning)]
    out += [f'<div class="warn">{esc(w)}</div>' for w in warnings]
    out.append(_usage_tables(run))
    return "".join(out)


def _usage_tables(run: RunData) -> str:
    s = run.summary or {}
    roles = s.get("usage_by_role") or {}
    out = []
    if roles:
        rows = []
        for role, u in roles.items():
            cost = u.get("cost_usd")
            rows.append([esc(role)] + [num_td(f"{int(_num(u.get(k))):,}") for k in
                                       ("calls", "cached_calls", "replayed_calls", "failed_calls", "retries",
                                        "prompt_tokens", "completion_tokens")]
                        + [num_td("unknown price" if cost is None else money(_num(cost)))])
        out.append("<h3>Usage by role</h3>" + table(
            ["role", "paid calls", "cache hits", "replayed", "failed", "retries", "prompt tokens",
             "completion tokens", "dollars"], rows))
        out.append('<p class="muted small">Paid calls include calls replayed from this run\'s cache after a '
                   'resume (paid once, in an earlier session). Dollars are nominal list prices.</p>')
    phases, every_session = run.phase_usage()
    if phases:
        rows = [[esc(name), num_td(f"{int(_num(p.get('calls'))):,}"), num_td(f"{int(_num(p.get('tokens'))):,}"),
                 num_td(money(_num(p.get("cost_usd"))) if run.priced and p.get("cost_usd") is not None else "—")]
                for name, p in phases.items()]
        if every_session:
            scope = f"summed over all {run.sessions} sessions" if run.sessions > 1 else "all sessions"
            note = ("From the meter snapshots in the event log; a resumed session re-counts what earlier sessions "
                    "paid, so these cover the whole run.")
        else:
            scope = "as summary.json has them"
            note = ("The event log cannot give them (no meter snapshots, or events missing), so these are the figures "
                    "the last session wrote; they cover earlier sessions only where it replayed their calls.")
        out.append(f"<h3>Usage by phase ({esc(scope)})</h3>" + table(["phase", "calls", "tokens", "dollars"], rows)
                   + f'<p class="muted small">{esc(note)} Calls: paid LM calls of every role.</p>')
    return "".join(out)


def _results(run: RunData) -> str:
    s = run.summary or {}
    best_id = run.best_id
    cands = {c["id"]: c for c in run.candidates}
    seed_ev = run.first(SeedEvaluated)
    seed_val = (s.get("seed") or {}).get("val_score", seed_ev.val_score if seed_ev else None)
    tuned_seed = cands.get("c0", {}).get("val_score")
    best_val = (s.get("best") or {}).get("val_score", cands.get(best_id or "", {}).get("val_score"))
    if not run.seed_scored:
        seed_val = best_val = None
    test, seed_test = s.get("test"), s.get("seed_test")
    started = run.first(RunStarted)
    n_val = ((started.sizes if started else None) or {}).get("val")
    unit = run.unit()
    cost_key = "cost_per_example" if unit == "usd" else "tokens_per_example"

    def test_cell(b: dict[str, Any] | None) -> str:
        if not b:
            return '<span class="muted">not evaluated</span>'
        return f"{score_text(b.get('score'))} <span class='muted small'>± {_num(b.get('stderr')):.3f} (n={b.get('n')})</span>"

    rows = [
        ["validation score" + (f" (n={n_val})" if n_val else ""), num_td(score_text(seed_val)),
         num_td(score_text(tuned_seed)),
         num_td(score_text(best_val))],
        ["test score", test_cell(seed_test), '<span class="muted">—</span>', test_cell(test)],
        [esc(plots.unit_label(unit, per_example=True)) + " (test)",
         num_td(cost_text(seed_test.get(cost_key), unit) if seed_test else "—"), "—",
         num_td(cost_text(test.get(cost_key), unit) if test else "—")],
    ]
    c0 = "seed as scored in the search (c0)" if run.method == "aflow" else "seed after tuning (c0)"
    out = [table(["", "seed as given", c0, f"best ({best_id or '?'})"], rows)]
    gain = s.get("test_gain_vs_seed")
    if gain and gain.get("n"):
        lo, hi = (gain.get("ci95") or [None, None])[:2]
        verdict = ""
        if lo is not None and hi is not None:
            verdict = (" — the interval excludes zero" if lo > 0 or hi < 0 else
                       " — the interval includes zero: not a clear difference at this n")
        out.append(f"<p><b>Paired test gain of the best workflow over the seed:</b> {esc(signed_text(gain.get('mean')))} "
                   f"(95% interval {esc(signed_text(lo))} to {esc(signed_text(hi))}, n = {esc(gain.get('n'))} test examples; "
                   f"better on {esc(gain.get('wins', '?'))}, worse on {esc(gain.get('losses', '?'))}){esc(verdict)}.</p>")
    elif test and not seed_test:
        out.append('<p class="muted">The seed was not evaluated on the test split, so there is no paired gain.</p>')
    elif not test:
        out.append('<p class="muted">The test split was not evaluated (turned off, no test data, or the budget ran '
                   "out first).</p>")
    if best_id == "c0" and run.seed_scored:
        out.append('<p class="muted">The search found nothing better than the (tuned) seed.</p>')
    return "".join(out)


def _plots(run: RunData) -> str:
    series = run.usage_series()
    parts = []
    xs_label = plots.candidate_x(run)[1]
    parts.append(figure(plots.score_progress(run), "validation score per candidate",
                         "Validation score of each candidate (x: " + esc(xs_label) + "). Hollow circles: the "
                         "candidate's score before the inner loop tuned its prompts. Green: best so far "
                         "(by the run's objective). Dotted: the seed as given."))
    if series.exact:
        note = "From the meter snapshots in the event log: exact."
    else:
        share = series.itemized_share()
        seed = "the seed evaluation (in tokens only) and " if run.priced else "the seed evaluation and "
        note = ("The event log itemizes spend only for " + seed + "the inner-loop steps; "
                "proposals, candidate validation and test evaluation appear only in the totals. Solid lines: "
                "itemized spend per role; diamonds: each role's exact run total; dotted: all roles, exact at "
                "the end of each phase.")
        if share is not None:
            note += f" Itemized: {share:.0%} of the total."
    parts.append(figure(plots.cost_over_run(run, series), "cumulative spend by role", esc(note)))
    unit = plots.unit_label(run.unit(), per_example=True)
    parts.append(figure(plots.pareto(run), "Pareto front",
                         f"Every candidate's validation score against its {esc(unit)} on validation; red: the "
                         "candidates no other candidate beats on both (labelled); star: the chosen best."
                         + ("" if run.priced else " Prices are unknown for at least one role, so cost is in tokens.")))
    return '<div class="pics">' + "".join(parts) + "</div>"


def _workflow_block(title: str, wf: Workflow | None) -> str:
    if wf is None:
        return f'<div><h3>{esc(title)}</h3><p class="muted">not available</p></div>'
    try:
        png = pictures.draw_workflow(wf, title=title)
        n = len(wf.sketch.nodes)
        pic = figure(png, title, f"{n} node{'s' if n != 1 else ''}. Rounded: llm; barred: tool; diamond: branch "
                                  "(dashed edges: the nodes a route runs); trapezoid: merge.")
    except Exception as exc:  # a picture must never cost the whole report
        pic = f'<div class="warn">could not draw this workflow: {esc(exc)}</div>'
    return (f"<div><h3>{esc(title)}</h3>{pic}"
            + details("Mermaid (paste into any Mermaid renderer)", f"<pre>{esc(to_mermaid(wf))}</pre>")
            + details("as text", f"<pre>{esc(to_text(wf))}</pre>") + "</div>")


def _workflows(run: RunData) -> str:
    best_title = f"best ({run.best_id})" if run.best_id else "best"
    return ('<div class="pics">' + _workflow_block("seed as given", run.seed_workflow)
            + _workflow_block(best_title, run.best_workflow) + "</div>")


def _param_changes(old: Any, new: Any) -> list[str]:
    out = []
    if len(old.demos) != len(new.demos) or old.demos != new.demos:
        out.append(f"demos: {len(old.demos)} → {len(new.demos)}" + (" (replaced)" if len(old.demos) == len(new.demos) else ""))
    for name in ("tools", "model", "temperature", "max_tokens", "max_tool_steps", "config"):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            out.append(f"{name}: {a!r} → {b!r}")
    return out


def _prompt_diffs(run: RunData) -> str:
    seed, best = run.seed_workflow, run.best_workflow
    if seed is None or best is None:
        return '<p class="muted">The seed or the best workflow is missing from the run directory.</p>'
    seed_ids, best_ids = seed.sketch.node_ids(), best.sketch.node_ids()
    out = []
    for node_id in [n for n in best_ids if n in seed_ids]:
        old, new = seed.params[node_id], best.params[node_id]
        changes = _param_changes(old, new)
        same = old.instruction == new.instruction
        body = (f'<p class="muted small">instruction unchanged</p><div class="diff">{esc(new.instruction)}</div>'
                if same else f'<div class="diff">{word_diff(old.instruction, new.instruction)}</div>')
        extra = "".join(f"<li>{esc(c)}</li>" for c in changes)
        out.append(f"<h3>{esc(node_id)}</h3>{body}" + (f"<ul>{extra}</ul>" if extra else ""))
    added = [n for n in best_ids if n not in seed_ids]
    removed = [n for n in seed_ids if n not in best_ids]
    for node_id in added:
        node, p = best.sketch.node(node_id), best.params[node_id]
        instr = f'<div class="diff"><ins>{esc(p.instruction)}</ins></div>' if p.instruction else \
            '<p class="muted small">no instruction</p>'
        demos = f"<ul><li>demos: {len(p.demos)}</li></ul>" if p.demos else ""
        out.append(f"<h3>{esc(node_id)} <span class='muted small'>(new {esc(node.kind)} node)</span></h3>{instr}{demos}")
    if removed:
        out.append(f"<p><b>Removed nodes:</b> {esc(', '.join(removed))}</p>")
    if not out:
        out.append('<p class="muted">No nodes.</p>')
    return '<p class="muted small">Seed as given → best. <ins>inserted</ins> <del>deleted</del></p>' + "".join(out)


def _usage_text(cost: dict[str, Any] | None, unit: str) -> str:
    if not cost:
        return "—"
    return "<br>".join(f"{esc(role)}: {esc(cost_text(usage_value(u, unit), unit))}"
                       + (f" <span class='muted small'>({int(_num(u.get('calls')))} calls)</span>" if u.get("calls") else "")
                       for role, u in cost.items())


def _arrow(a: Any, b: Any) -> str:
    return f"{score_text(a)} → {score_text(b)}" if b is not None else f"{score_text(a)} → <span class='muted'>not run</span>"


def _inner_table(run: RunData) -> str:
    records = run.inner_records()
    if not records:
        why = " (the AFlow-style baseline changes structure only)" if run.method == "aflow" else ""
        return f'<p class="muted">No inner-loop candidates were logged{esc(why)}.</p>'
    unit = run.unit()
    rows = []
    for r in records:
        rows.append(_inner_row(r, unit))
    patience = [e for e in run.of_type(Patience) if e.loop == "inner"] + run.of_type(InnerPatience)
    note = (f'<p class="muted small">The inner loop stopped early for lack of progress {len(patience)} time(s).</p>'
            if patience else "")
    accepted = sum(bool(r.accepted) for r in records)
    return (f"<p>{len(records)} proposals, {accepted} accepted. A proposal must gain on its minibatch, then win "
            "its validation race against the current workflow.</p>" + note
            + table(["candidate", "step", "node", "change", "gradient", "minibatch", "validation", "accepted",
                      "reason", "cost"], rows, row_class=lambda i: "best" if records[i].accepted else ""))


def _inner_row(r: InnerCandidate, unit: str) -> list[str]:
    gradient = str(r.gradient or "")
    short = gradient if len(gradient) <= GRADIENT_CHARS else gradient[:GRADIENT_CHARS] + "…"
    grad_html = esc(short) + (details("full text", f"<pre>{esc(gradient)}</pre>") if short != gradient else "")
    if r.change in ("instruction", "rule"):
        old, new = ("" if v is None else str(v) for v in (r.old, r.new))
        change = esc(str(r.change)) + details("proposed rewrite", f'<div class="diff">{word_diff(old, new)}</div>')
    else:
        change = esc(f"{r.change}: {r.old} → {r.new}")
    return [esc(r.candidate), num_td(esc(r.step)), esc(r.node_id), change, grad_html,
            num_td(_arrow(r.minibatch_before, r.minibatch_after)), num_td(_arrow(r.val_before, r.val_after)),
            tick(bool(r.accepted)), esc(r.reason), _usage_text(r.cost, unit)]


def _outer_tables(run: RunData) -> str:
    if not run.candidates:
        return '<p class="muted">No candidate was scored.</p>'
    return _search_tree(run) + "<h3>Candidates</h3>" + _candidate_tables(run)


def _candidate_score(c: dict[str, Any]) -> str:
    return score_text(c.get("val_score")) if scored(c) else race_text(c)


def _candidate_line(run: RunData, c: dict[str, Any], front: set[str], accepted: set[str]) -> str:
    score = _candidate_score(c)
    before = c.get("initial_val_score")
    if before is not None and abs(_num(before) - _num(c.get("val_score"))) > 1e-12:
        score = f"{score_text(before)} → {score} after tuning"
    unit = run.unit()
    cost = cost_text(c.get("cost_per_example") if unit == "usd" else c.get("tokens_per_example"), unit)
    tags = "".join(f'<span class="tag{cls}">{esc(text)}</span>' for flag, cls, text in (
        (c["id"] == run.best_id, " bestnow", "chosen best"), (c["id"] in front, " front", "Pareto front"),
        (c["id"] in accepted and c["id"] != run.best_id, "", "was best when scored")) if flag)
    edit = "seed" if not c.get("parent") else str(c.get("edit") or "?")
    return (f"<b>{esc(c['id'])}</b> {'★ ' if c['id'] == run.best_id else ''}<span class='muted'>{esc(edit)}</span> · "
            f"validation {esc(score)} · {esc(cost)}/example · {esc(_plural(c.get('nodes'), 'node'))}{tags}")


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s") if isinstance(n, int) else f"? {word}s"


def _search_tree(run: RunData) -> str:
    """Every scored candidate under the candidate it was made from, labelled with the edit that
    made it; proposals that never became candidates (invalid, duplicate) hang greyed under their parent."""
    front, accepted = set(run.front_ids), set(run.accepted_ids)
    children: dict[str | None, list[dict[str, Any]]] = {}
    earlier: set[str] = set()
    for c in run.candidates:  # a parent is scored before its children: anything else is shown as a root
        parent = c.get("parent") if c.get("parent") in earlier else None
        children.setdefault(parent, []).append(c)
        earlier.add(c["id"])
    dropped: dict[str, list[CandidateRejected]] = {}
    for e in run.of_type(CandidateRejected):
        dropped.setdefault(str(e.parent), []).append(e)

    def subtree(parent: str | None) -> str:
        items = [f"<li>{_candidate_line(run, c, front, accepted)}{subtree(c['id'])}</li>"
                 for c in children.get(parent, [])]
        items += [_dropped_line(e) for e in (dropped.get(str(parent), []) if parent is not None else [])]
        if not items:
            return ""
        return f'<ul class="tree{" root" if parent is None else ""}">{"".join(items)}</ul>'

    return ("<h3>Search tree</h3><p class=\"muted small\">Each candidate under the one it was made from, with the "
            "structural edit that made it; validation before → after the inner loop tuned its prompts.</p>"
            + subtree(None))


def _dropped_line(e: CandidateRejected) -> str:
    why = e.reason or (f"same structure as {e.same_as}" if e.same_as else "") or e.error or "invalid"
    return f'<li class="rejected">✗ {esc(e.edit or "(no edit)")} — dropped: {esc(why)}</li>'


def _candidate_tables(run: RunData) -> str:
    front, accepted, best_id = set(run.front_ids), set(run.accepted_ids), run.best_id
    rows = []
    for c in run.candidates:
        score = _candidate_score(c)
        if c.get("initial_val_score") is not None and abs(_num(c["initial_val_score"]) - _num(c.get("val_score"))) > 1e-12:
            score = f"{score_text(c['initial_val_score'])} → {score}"
        inner_stop = c.get("inner_stopped")
        edit = esc(c.get("edit")) + (f"<div class='muted small'>inner loop stopped: {esc(inner_stop)}</div>"
                                     if inner_stop else "")
        rows.append([esc(c["id"]) + (" ★" if c["id"] == best_id else ""), esc(c.get("parent") or "—"), edit,
                     num_td(score), num_td(cost_text(c.get("cost_per_example"), "usd") if run.priced else "—"),
                     num_td(f"{_num(c.get('tokens_per_example')):,.0f}"), num_td(esc(c.get("nodes", "—"))),
                     num_td(esc(c.get("inner_steps", "—"))), tick(c["id"] in accepted), tick(c["id"] in front)])
    cands = run.candidates
    out = [table(["id", "parent", "edit", "validation (before → after tuning)", "dollars / example",
                   "tokens / example", "nodes", "inner steps", "new best when scored", "on Pareto front"],
                  rows, row_class=lambda i: "best" if cands[i]["id"] == best_id else "")]
    if [e for e in run.of_type(Patience) if e.loop == "outer"] or run.of_type(OuterPatience):
        out.append('<p class="muted small">The outer loop stopped for lack of progress (patience).</p>')
    proposals = run.proposals()
    out.append("<h3>Proposals</h3>")
    if not proposals:
        out.append('<p class="muted">No structural edit was proposed.</p>')
        return "".join(out)
    prows = [_proposal_row(r) for r in proposals]
    out.append(table(["event", "what", "parent", "edit", "details", "rationale (optimizer)"], prows))
    return "".join(out)


def _proposal_row(r: LoggedEvent) -> list[str]:
    """One row of the proposals table: what became of a proposal, its edit, the details the event
    carries (reason, structure it duplicated, errors, attempt) and the optimizer's rationale."""
    e = r.event
    kind, what, rationale = str(r.type), "", ""
    reason = same_as = first_error = error = attempt = None
    if isinstance(e, ProposalMade):
        kind = str(e.status) + (" (repaired)" if e.repaired else "")
        what, same_as, error, attempt, rationale = e.edit, e.same_as, e.error, e.attempt, e.critique
    elif isinstance(e, CandidateRejected):
        kind, what, reason, same_as, first_error, error = "rejected", e.edit, e.reason, e.same_as, e.first_error, e.error
    elif isinstance(e, CandidateProposed):
        kind, what, attempt, rationale = "proposed", e.edit, e.attempt, e.rationale
    elif isinstance(e, EditRepaired):
        kind, error = "repaired", e.error
    parent = e.parent if isinstance(e, (ProposalMade, CandidateRejected, CandidateProposed, EditRepaired)) else None
    detail = []
    if reason:
        detail.append(f"reason: {reason}")
    if same_as:
        detail.append(f"same structure as {same_as}")
    if first_error:
        detail.append(f"first error: {first_error}")
    if error:
        detail.append(f"error: {error}")
    if attempt:
        detail.append(f"attempt {attempt}")
    return [num_td(esc(r.seq)), esc(kind), esc(parent or "—"), esc(what or "") or "—",
            "<br>".join(esc(d) for d in detail) or "—", esc(rationale) if rationale else "—"]


def _settings(run: RunData) -> str:
    settings = run.settings.get("optimize") or (run.summary or {}).get("config")
    if not settings:
        return ""
    text = json.dumps(redact(settings), indent=2, ensure_ascii=False, default=str)
    return details("all settings of the run", f"<pre>{esc(text)}</pre>")


def _short(value: Any, limit: int = TRACE_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f" … ({len(text) - limit:,} more characters)"


def _trace_html(title: str, side: dict[str, Any] | None) -> str:
    """One workflow run on one example, node by node (inputs, the model's reply, output, error)."""
    if not side:
        return f'<div class="trace"><h4>{esc(title)}</h4><p class="muted">not evaluated</p></div>'
    trace = side.get("trace") if isinstance(side.get("trace"), dict) else {}
    parts = [f"<h4>{esc(title)}: score {esc(score_text(side.get('score')))}</h4>"]
    if side.get("feedback"):
        parts.append(f'<p class="small">metric: {esc(_short(side["feedback"], 400))}</p>')
    for node in trace.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        usage = node.get("usage") or {}
        head = (f"{node.get('node_id')} ({node.get('kind')})" + (" — skipped" if node.get("skipped") else
                f" — {node.get('calls', 0)} call(s), {int(_num(usage.get('prompt_tokens')) + _num(usage.get('completion_tokens'))):,} "
                f"tokens, {_num(node.get('latency_s')):.2f} s"))
        body = [f"<b>inputs</b> {esc(_short(node.get('inputs')))}"]
        for step in node.get("steps") or []:
            body.append(f"<b>tool</b> {esc(_short(step, 600))}")
        raw = node.get("raw") or []
        if raw:
            body.append(f"<b>reply</b> {esc(_short(raw[-1]))}")
        body.append(f"<b>output</b> {esc(_short(node.get('output')))}")
        if node.get("error"):
            body.append(f'<span class="no">error: {esc(node["error"])}</span>')
        parts.append(f'<div class="small"><i>{esc(head)}</i><pre>{"<br>".join(body)}</pre></div>')
    if side.get("error") and not trace.get("nodes"):
        parts.append(f'<p class="no small">{esc(side["error"])}</p>')
    return f'<div class="trace">{"".join(parts)}</div>'


def _outcome(row: dict[str, Any]) -> str:
    best, seed = row.get("best") or {}, row.get("seed") or {}
    if not seed:
        return "best only"
    b, s_ = _num(best.get("score")), _num(seed.get("score"))
    return "won" if b > s_ + 1e-12 else "lost" if b < s_ - 1e-12 else "tie"


def _examples(run: RunData) -> str:
    rows = run.test_examples
    if not rows:
        return ('<p class="muted">The test split was not saved example by example (it was not evaluated, or the run '
                'was made by an older FlowBot).</p>')
    outcomes = [_outcome(r) for r in rows]
    count = {k: outcomes.count(k) for k in ("won", "lost", "tie", "best only")}
    has_seed = count["best only"] < len(rows)
    order = {"won": 0, "lost": 1, "best only": 2, "tie": 3}
    ranked = sorted(zip(rows, outcomes), key=lambda ro: order[ro[1]])
    shown = [ro for ro in ranked if ro[1] != "tie"] + [ro for ro in ranked if ro[1] == "tie"][:MAX_TIED_ROWS]
    table_rows = []
    for row, outcome in shown:
        example = row.get("example") if isinstance(row.get("example"), dict) else {}
        trace = ((row.get("best") or {}).get("trace") or {}) if isinstance(row.get("best"), dict) else {}
        inputs = trace.get("inputs") if isinstance(trace.get("inputs"), dict) else {}
        expected = {k: v for k, v in example.items() if k not in inputs and k not in ("id", "_id")}
        seed, best = row.get("seed") or {}, row.get("best") or {}

        def pred(side: dict[str, Any]) -> str:
            if not side:
                return '<span class="muted">—</span>'
            return f"{esc(_short(side.get('prediction'), 200))} <span class='muted small'>({esc(score_text(side.get('score')))})</span>"

        first = not table_rows and outcome in ("won", "lost")  # the first difference, opened
        traces = details("traces: seed and best, node by node",
                          f'<div class="pair">{_trace_html("seed", seed or None)}{_trace_html("best", best)}</div>',
                          open_=first)
        css = {"won": "won", "lost": "lost"}.get(outcome, "muted")
        cells = [f'<span class="{css}">{esc(outcome)}</span>', esc(row.get("id")), esc(_short(inputs or example, 300)),
                 esc(_short(expected, 160)), pred(seed), pred(best)]
        table_rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
                          + f'<tr><td colspan="{len(cells)}" class="small">{traces}</td></tr>')
    if has_seed:
        head = (f"<p>On {len(rows)} test examples the best workflow <b class='won'>won {count['won']}</b>, "
                f"<b class='lost'>lost {count['lost']}</b> and tied {count['tie']} against the seed (wins and losses "
                "first; only these carry information about the difference).</p>")
    else:
        head = f"<p>{len(rows)} test examples (the seed was not evaluated on the test split).</p>"
    hidden = len(rows) - len(shown)
    tail = (f'<p class="muted small">{hidden} more tied examples are in {esc(run.path.name)}/test_examples.jsonl.</p>'
            if hidden else "")
    header = "".join(f"<th>{esc(h)}</th>" for h in ("outcome", "id", "input", "expected", "seed (score)",
                                                     "best (score)"))
    return head + f'<table class="examples"><tr>{header}</tr>{"".join(table_rows)}</table>' + tail


SECTIONS: list[tuple[str, str, Callable[[RunData], str]]] = [
    ("results", "Results", _results),
    ("examples", "Test examples", _examples),
    ("plots", "Plots", _plots),
    ("workflows", "Workflows", _workflows),
    ("prompts", "Prompt changes", _prompt_diffs),
    ("inner", "Inner loop", _inner_table),
    ("outer", "Outer loop", _outer_tables),
]


def render_report(run: RunData) -> str:
    """The whole page as a string (see :func:`write_report`)."""
    nav = '<a href="#run">Run</a>' + "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in SECTIONS)
    body = [f"<h1>FlowBot run report: {esc(run.task)}</h1>",
            f'<div class="muted">{esc(run.method)} · {esc(run.task_model)} (task) · {esc(run.optimizer_model)} '
            f"(optimizer)</div>", f"<nav>{nav}</nav>",
            '<h2 id="run">Run</h2>', _header(run), _settings(run)]
    for sid, title, build in SECTIONS:
        body.append(f'<h2 id="{sid}">{esc(title)}</h2>')
        body.append(build(run))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>FlowBot report: {esc(run.task)} ({esc(run.method)})</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (one self-contained file) and return its path.

    Works for finished, stopped, resumed and interrupted runs; raises ReportError (a ValueError)
    when ``run_dir`` holds no run.
    """
    run = load_run(run_dir)
    out = run.path / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render_report(run), encoding="utf-8")
    tmp.replace(out)
    return out
