"""The report's plots as PNG bytes (matplotlib's object API on the Agg canvas: no pyplot state, no
display): validation score over the run, cumulative spend by role, and the score/cost Pareto front.

    >>> from flowbot.report.rundata import load_run
    >>> png = score_progress(load_run("runs/my-run"))        # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import Any

from flowbot.optim.events import CandidateEvaluated, SeedEvaluated
from flowbot.report.rundata import RunData, UsageSeries, _num, scored

ROLE_COLOURS = {"task": "#2563eb", "optimizer": "#ea580c", "judge": "#16a34a"}
OTHER_COLOURS = ["#9333ea", "#0891b2", "#be123c", "#4d7c0f"]
MAX_LABELS = 30  # beyond this many candidates, point labels would only be clutter


def _figure(width: float = 7.0, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, color="#e2e8f0", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only draws a warning
        ax.legend(framealpha=0.9, **kw)


def _role_colour(role: str, i: int) -> str:
    return ROLE_COLOURS.get(role, OTHER_COLOURS[i % len(OTHER_COLOURS)])


def unit_label(unit: str, per_example: bool = False) -> str:
    if unit == "usd":
        return "dollars per example" if per_example else "dollars"
    return "tokens per example" if per_example else "tokens"


def _unit_axis(axis: Any, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter

    if unit == "usd":
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:.2g}" if v else "$0"))
    else:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _score_limits(ax: Any, values: list[float]) -> None:
    if values and all(0.0 <= v <= 1.0 for v in values):
        ax.set_ylim(-0.04, 1.04)


# -- (a) validation score per candidate ---------------------------------------------------------
def candidate_x(run: RunData) -> tuple[list[float], str]:
    """x of each candidate: cumulative paid calls when the log has meter snapshots, else its index."""
    snaps = {r.event.id: r.usage_total for r in run.logged(CandidateEvaluated) if isinstance(r.usage_total, dict)}
    if run.candidates and all(c["id"] in snaps for c in run.candidates):
        xs = [sum(_num(u.get("calls")) for u in snaps[c["id"]].values()) for c in run.candidates]
        return xs, "paid LM calls so far (all roles)"
    return [float(i) for i in range(len(run.candidates))], "candidate, in order of evaluation"


def score_progress(run: RunData) -> bytes:
    """Validation score of each candidate, the best so far, and the score before the inner loop tuned it."""
    fig, ax = _figure()
    xs_all, xlabel = candidate_x(run)
    # a raced-out candidate has no score: a tick on the x axis where it was raced, not a point at 0
    raced = [x for x, c in zip(xs_all, run.candidates) if not scored(c)]
    if raced:
        ax.scatter(raced, [0.0] * len(raced), marker="|", s=160, color="#94a3b8", zorder=3,
                   transform=ax.get_xaxis_transform(), label="raced out (no full score)")
    kept = [(x, c) for x, c in zip(xs_all, run.candidates) if scored(c)]
    xs, cands = [x for x, _ in kept], [c for _, c in kept]
    scores = [_num(c.get("val_score")) for c in cands]
    all_scores = list(scores)
    for x, c, s in zip(xs, cands, scores):  # inner-loop gain: from the untuned to the tuned score
        before = c.get("initial_val_score")
        if before is not None and abs(_num(before) - s) > 1e-12:
            ax.plot([x, x], [_num(before), s], color="#94a3b8", lw=1.2, zorder=2)
            ax.scatter([x], [_num(before)], s=28, facecolors="white", edgecolors="#64748b", zorder=3)
            all_scores.append(_num(before))
    if cands:
        label = "candidate" if run.method == "aflow" else "candidate (after inner-loop tuning)"
        ax.scatter(xs, scores, s=36, color="#2563eb", zorder=4, label=label)
        best_x, best_y, best_val = [], [], float("-inf")
        best_score = 0.0
        for x, c in zip(xs, cands):
            value = _num(c.get("objective", c.get("val_score")))
            if value > best_val:
                best_val, best_score = value, _num(c.get("val_score"))
            best_x.append(x)
            best_y.append(best_score)
        if max(xs_all) > best_x[-1]:  # the best held while the later candidates were raced out
            best_x.append(max(xs_all))
            best_y.append(best_score)
        ax.step(best_x, best_y, where="post", color="#16a34a", lw=2, zorder=3, label="best so far")
        if any(c.get("initial_val_score") is not None and abs(_num(c["initial_val_score"]) - s) > 1e-12
               for c, s in zip(cands, scores)):
            ax.scatter([], [], s=28, facecolors="white", edgecolors="#64748b", label="before inner-loop tuning")
        best_id = run.best_id
        for x, c, s in zip(xs, cands, scores):
            if c["id"] == best_id:
                ax.scatter([x], [s], marker="*", s=220, color="#f59e0b", edgecolors="#92400e", zorder=5,
                           label=f"chosen best ({best_id})")
            if len(cands) <= MAX_LABELS:
                ax.annotate(str(c["id"]), (x, s), textcoords="offset points", xytext=(5, 5), fontsize=7.5,
                            color="#1e293b", annotation_clip=False)
        if xlabel.startswith("candidate"):
            ax.set_xticks(xs_all if len(xs_all) <= MAX_LABELS else xs_all[:: max(1, len(xs_all) // 10)])
    seed_ev = run.first(SeedEvaluated)
    seed_val = (run.summary or {}).get("seed", {}).get("val_score", seed_ev.val_score if seed_ev else None)
    if seed_val is not None and run.seed_scored:
        ax.axhline(_num(seed_val), color="#64748b", ls=":", lw=1.2, label="seed as given")
        all_scores.append(_num(seed_val))
    if not cands:
        ax.text(0.5, 0.5, "no candidate was scored", transform=ax.transAxes, ha="center", va="center")
    _score_limits(ax, all_scores)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation score")
    ax.set_title("Validation score of each candidate", fontsize=11)
    ax.margins(x=0.08)
    _legend(ax, fontsize=8, loc="best")
    return _png(fig)


# -- (b) cumulative spend by role ---------------------------------------------------------------
def cost_over_run(run: RunData, series: UsageSeries | None = None) -> bytes:
    """Cumulative spend per role along the event log; exact when the log carries meter snapshots,
    otherwise the itemized part per role plus the exact totals at phase ends and at the end."""
    series = series or run.usage_series()
    fig, ax = _figure()
    unit = unit_label(series.unit)
    known = list(ROLE_COLOURS)
    roles = sorted(set(series.by_role) | set(series.totals),
                   key=lambda r: (known.index(r) if r in known else len(known), r))
    for i, role in enumerate(roles):
        colour = _role_colour(role, i)
        values = series.by_role.get(role)
        if values:
            label = role if series.exact else f"{role} (itemized in the log)"
            ax.step(series.x, values, where="post", color=colour, lw=2, label=label)
        if not series.exact and role in series.totals:
            last_x = series.x[-1] if values else 0
            last = values[-1] if values else 0.0
            ax.plot([last_x, series.end_x], [last, series.totals[role]], color=colour, ls="--", lw=1)
            ax.scatter([series.end_x], [series.totals[role]], color=colour, marker="D", s=30, zorder=4,
                       label=f"{role}: run total")
    if series.phase_points:
        px, py, names = zip(*series.phase_points)
        ax.plot(px, py, color="#0f172a", ls=":", marker="o", ms=4, lw=1, label="all roles (exact at phase ends)")
        for x, y, name in series.phase_points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(-4, 6), fontsize=7, ha="right")
    for x, cid in series.candidate_marks[:MAX_LABELS]:
        ax.axvline(x, color="#cbd5e1", lw=0.8, zorder=0)
        ax.annotate(cid, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color="#64748b",
                    xytext=(2, -10), textcoords="offset points")
    if not roles:
        ax.text(0.5, 0.5, "no usage recorded", transform=ax.transAxes, ha="center", va="center")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(series.x_label)
    _unit_axis(ax.yaxis, series.unit)
    ax.set_ylabel(f"cumulative {unit}")
    ax.set_title(f"Spend over the run by role ({unit})", fontsize=11)
    _legend(ax, fontsize=7.5, loc="upper left")
    return _png(fig)


# -- (c) Pareto front -----------------------------------------------------------------------------
def pareto(run: RunData) -> bytes:
    """Validation score against cost per example for every candidate; the front is highlighted."""
    fig, ax = _figure(6.4, 3.8)
    unit = run.unit()
    front = set(run.front_ids)
    pts = [(c["id"], run.candidate_cost(c), _num(c.get("val_score"))) for c in run.candidates if scored(c)]
    raced_out = len(run.candidates) - len(pts)
    others = [p for p in pts if p[0] not in front]
    on_front = sorted((p for p in pts if p[0] in front), key=lambda p: (p[1], -p[2]))
    if others:
        ax.scatter([p[1] for p in others], [p[2] for p in others], s=30, color="#94a3b8", label="candidate", zorder=3)
        if len(pts) <= MAX_LABELS:
            for cid, x, y in others:
                ax.annotate(cid, (x, y), textcoords="offset points", xytext=(4, -9), fontsize=7, color="#64748b")
    if on_front:
        ax.step([p[1] for p in on_front], [p[2] for p in on_front], where="post", color="#dc2626", lw=1.2,
                alpha=0.6, zorder=2)
        ax.scatter([p[1] for p in on_front], [p[2] for p in on_front], s=60, color="#dc2626",
                   edgecolors="#7f1d1d", label="Pareto front", zorder=4)
        for cid, x, y in on_front:
            ax.annotate(cid, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8.5, fontweight="bold",
                        color="#7f1d1d")
    best = next((p for p in pts if p[0] == run.best_id), None)
    if best is not None:
        ax.scatter([best[1]], [best[2]], marker="*", s=200, color="#f59e0b", edgecolors="#92400e", zorder=5,
                   label=f"chosen best ({best[0]})")
    if raced_out:  # said in the legend, so a reader does not look for them
        ax.scatter([], [], marker="|", color="#94a3b8",
                   label=f"{raced_out} raced out (no full score), not shown")
    if not pts:
        ax.text(0.5, 0.5, "no candidate was scored", transform=ax.transAxes, ha="center", va="center")
    _score_limits(ax, [p[2] for p in pts])
    _unit_axis(ax.xaxis, unit)
    ax.set_xlabel(unit_label(unit, per_example=True) + " (validation)")
    ax.set_ylabel("validation score")
    ax.set_title("Score against cost: the Pareto front", fontsize=11)
    ax.margins(x=0.1)
    if pts or raced_out:
        _legend(ax, fontsize=8, loc="best")
    return _png(fig)
