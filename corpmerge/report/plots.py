"""Pictures of a run (``report.png``, also re-drawn by ``corpmerge report``) and of the fidelity benchmark.

The run's picture reads a schema-checked report (``corpmerge.output.report_schema``): a missing
part makes its panel say so. The benchmark summary reads semi-trusted dicts: an odd value is drawn
as "no data", never a traceback.
Figures are drawn with the object-oriented API on the Agg canvas (no pyplot, no global backend
switch) at 800 px wide, the width of a model card on the Hub.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from rich.console import RenderableType

from corpmerge.output.report_schema import RunReport
from corpmerge.report.view import evaluation_scope, finite, load_report, model_label, ordered_rows, report_view, shown_fraction

WIDTH_IN, DPI = 8.0, 100
FIXES, REGRESSIONS, MERGED, OTHER = "#2a9d8f", "#e76f51", "#264653", "#8d99ae"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _no_data(ax: Axes, title: str, message: str) -> None:
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="dimgray")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path, title: str) -> Path:
    """Render on the Agg canvas, then store as a 256-colour palette PNG (about a third of the RGBA size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=DPI)
    info = PngInfo()
    info.add_text("Title", title)
    info.add_text("Software", "corpmerge")
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(path, "png", optimize=True, pnginfo=info)
    return path


# --- report.png -------------------------------------------------------------------------------


def report_figure(report: RunReport) -> Figure:
    """Three panels: population rewards, gate fixes/regressions per candidate, held-out Δ vs base."""
    fig = Figure(figsize=(WIDTH_IN, 10.5), layout="constrained")
    reward_ax, gate_ax, held_ax = fig.subplots(3, 1, height_ratios=[1.0, 1.1, 1.0])
    outcome = "gate disabled" if not report.gate.enabled else "accepted" if report.gate.accepted else "abstained"
    fig.suptitle(f"corpmerge {report.method} on {report.base_model} — {outcome}", fontsize=12)
    _rewards_panel(reward_ax, report)
    _gate_panel(gate_ax, report)
    _held_out_panel(held_ax, report)
    return fig


def write_report_png(report: RunReport, path: Path) -> Path:
    """Draw ``report_figure(report)`` to ``path`` (PNG, about 800×1050 px); returns the path."""
    return _save(report_figure(report), path, "corpmerge run report")


def render_report_dir(path: Path) -> tuple[RenderableType, Path]:
    """``corpmerge report``: find report.json in an output or work folder, write report.png beside it
    (no model is loaded) and return (the report's tables, the PNG's path)."""
    report, found = load_report(path)
    picture = write_report_png(report, found.with_name("report.png"))
    return report_view(report, found, picture), picture


def _rewards_panel(ax: Axes, report: RunReport) -> None:
    title = "population: fold-A reward of each entry"
    pop = report.population
    rewards = np.array([r for r in map(finite, pop.rewards) if r is not None])
    low, mean, high = finite(pop.reward_min), finite(pop.reward_mean), finite(pop.reward_max)
    if rewards.size:
        _histogram(ax, rewards)
        title += f" ({rewards.size} entries)"
        examples = report.racing.examples if report.racing else []
        short = sum(m < max(examples) for m in examples) if examples else 0
        if short:
            title += f"\n{short} are racing's estimates from fewer than {max(examples)} examples"
    elif None not in (low, mean, high):
        ax.hlines(0.5, low, high, color=OTHER, linewidth=6, label=f"range {low:.3f}–{high:.3f}")
        ax.plot([mean], [0.5], "o", color=MERGED, label=f"mean {mean:.3f}")
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        title += " (min, mean, max only)"
    else:
        _no_data(ax, title, "no population rewards in report.json")
        return
    base_reward = finite(report.base.get("A"))
    if base_reward is not None:
        ax.axvline(base_reward, color="black", linewidth=1.5, label=f"base accuracy {base_reward:.3f}")
    threshold = finite(pop.elite_threshold)
    if threshold is not None:
        above = f", {int((rewards >= threshold).sum())} at or above" if rewards.size else ""
        ax.axvline(threshold, color=FIXES, linestyle="--", linewidth=1.5, label=f"elite threshold {threshold:.3f}{above}")
    ax.set_title(title, loc="left")
    ax.set_xlabel("reward on fold A (construct)")
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)


def _histogram(ax: Axes, rewards: np.ndarray) -> None:
    """Counts per reward; few distinct values (rewards are often k/n) get one bar each, centred on the value."""
    values, counts = np.unique(rewards, return_counts=True)
    if values.size <= 40:
        gap = float(np.diff(values).min()) if values.size > 1 else max(abs(float(values[0])) * 0.05, 0.01)
        ax.bar(values, counts, width=0.8 * gap, color=OTHER)
    else:
        ax.hist(rewards, bins=40, color=OTHER, edgecolor="white")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("entries")


def _varying_keys(params: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for p in params for k in p})
    return [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]


def _fmt(value: Any) -> str:
    return f"{value:g}" if finite(value) is not None else str(value)


def _gate_panel(ax: Axes, report: RunReport) -> None:
    title = "gate (fold B): fixes and regressions vs the base per candidate"
    gate = report.gate
    rounds = report.stage2.rounds if report.stage2 else []
    bars = []  # (tick label, fixes, regressions, accepted, stopped)
    small = len(report.candidates) <= 8
    keys = _varying_keys([c.params for c in report.candidates]) if small else []
    for i, cand in enumerate(report.candidates, 1):
        ess = cand.ess if small else None
        label = "\n".join([f"#{i}"] + [f"{k}={_fmt(cand.params.get(k))}" for k in keys[:3]] + ([f"ESS {ess:.1f}"] if ess is not None else []))
        accepted = bool(cand.params) and gate.accepted and cand.params == gate.params
        val = cand.validated
        bars.append((label, val.fixes if val else None, val.regressions if val else None, accepted, cand.stopped))
    for r in rounds:
        label = f"stage 2\nround {r.round}" + (f"\nESS {r.ess:.1f}" if r.ess is not None else "")
        val = r.validated
        bars.append((label, val.fixes if val else None, val.regressions if val else None, r.accepted, False))
    if not any(f is not None or g is not None for _, f, g, _, _ in bars):
        message = "gate disabled: no candidate was validated" if not gate.enabled else "no validated candidates in report.json"
        _no_data(ax, title, message)
        return
    x = np.arange(len(bars))
    fixes = np.array([f or 0.0 for _, f, _, _, _ in bars])
    regressions = np.array([g or 0.0 for _, _, g, _, _ in bars])
    stopped = [s for *_, s in bars]
    hatches = ["//" if s else "" for s in stopped]
    up = ax.bar(x, fixes, color=FIXES, label="fixes (base wrong → right)", hatch=hatches)
    down = ax.bar(x, -regressions, color=REGRESSIONS, label="regressions (right → wrong)", hatch=hatches)
    labelled = len(bars) <= 15
    if labelled:
        ax.bar_label(up, fmt="%g", fontsize=8, padding=1)
        ax.bar_label(down, labels=[f"{r:g}" if r else "" for r in regressions], fontsize=8, padding=1)
    ax.axhline(0, color="black", linewidth=0.8)
    if not (fixes.any() or regressions.any()):
        ax.text(
            0.5,
            0.25,
            "no fixes and no regressions: every candidate matched the base on every fold-B example",
            ha="center",
            transform=ax.transAxes,
            color="dimgray",
            fontsize=9,
        )
    top = max(fixes.max(), regressions.max(), 1.0)
    for xi, (_, _, _, accepted, _) in zip(x, bars):
        if accepted:
            ax.axvspan(xi - 0.45, xi + 0.45, color=FIXES, alpha=0.12, linewidth=0)
            ax.annotate("accepted", (xi, fixes[xi]), xytext=(0, 13 if labelled else 3), textcoords="offset points", ha="center", fontsize=8, fontweight="bold")
    handles, _ = ax.get_legend_handles_labels()
    if any(stopped):
        handles.append(Patch(facecolor="white", edgecolor="gray", hatch="//", label="stopped early (racing)"))
    if rounds and report.candidates:
        ax.axvline(len(report.candidates) - 0.5, color="gray", linewidth=0.8, linestyle=":")
    ax.set_ylim(-top * 1.2, top * 1.6)
    step = math.ceil(len(bars) / 15)
    ticks = [label if i % step == 0 or accepted or "\n" in label else "" for i, (label, _, _, accepted, _) in enumerate(bars)]
    ax.set_xticks(x, ticks, fontsize=8 if keys or rounds else 9)
    ax.set_ylabel("examples")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(lambda v, _: f"{abs(v):g}")
    ax.set_title(title, loc="left")
    ax.set_xlabel(
        "candidate (grid order)" + (" · stage 2 rounds" if rounds else "") + (f" · {gate.candidates_probed} probed on fold C" if gate.enabled else "")
    )
    ax.legend(handles=handles, fontsize=8, loc="upper left", ncols=3, framealpha=0.9)


def _xerr(value: float, low: float | None, high: float | None) -> list[list[float]] | None:
    """Error-bar lengths in points for an interval around ``value`` (none without both ends; an end on the wrong side draws as 0)."""
    if low is None or high is None:
        return None
    return [[100 * max(value - low, 0.0)], [100 * max(high - value, 0.0)]]


def _held_out_panel(ax: Axes, report: RunReport) -> None:
    evaluation = report.evaluation
    if evaluation is None or not evaluation.rows:
        _no_data(ax, "held-out evaluation", "no held-out evaluation in this run (the recipe has no `evaluate:`)")
        return
    title = f"held-out {evaluation_scope(evaluation)}: accuracy Δ vs base, {'clustered' if evaluation.clustered_by else 'paired'} 95% interval"
    rows = ordered_rows(evaluation)
    labels, ys = [], np.arange(len(rows))[::-1]
    for y, (key, row) in zip(ys, rows):
        acc = finite(row.accuracy)
        short = model_label(key, evaluation, report.method, report.gate.enabled, ranked=False)  # the caption says what ranked them
        labels.append(f"{short}\n{'—' if acc is None else f'{100 * acc:.1f}%'} (n={row.n})")
        if key == "base":
            ax.plot([0], [y], "D", color="black")
            continue
        diff, low, high = finite(row.diff), finite(row.ci_low), finite(row.ci_high)
        if diff is None:
            ax.annotate("no paired difference", (0, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8, color="dimgray")
            continue
        color = MERGED if key == "merged" else OTHER
        ax.errorbar([100 * diff], [y], xerr=_xerr(diff, low, high), fmt="o", color=color, capsize=4, markersize=7)
        ax.annotate(f"{100 * diff:+.1f}", (100 * diff, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ranked = evaluation.ranked_on
    ax.set_xlabel("Δ accuracy vs base (percentage points)" + (f"\nRandOpt entries ranked on {ranked}" if ranked else ""))
    fraction = shown_fraction(evaluation)
    if fraction is not None:
        title += f"\nmerged gain = {fraction:.2f}× the largest vote's gain (both intervals exclude 0)"
    ax.set_title(title, loc="left")
    ax.grid(axis="x", alpha=0.3)


# --- the fidelity benchmark's summary figure ---------------------------------------------------


def summary_figure(rows: list[dict[str, Any]]) -> Figure:
    """Methods × tasks: Δ accuracy vs base with 95% intervals, one panel per task.

    ``rows`` is a list of dicts, one per (task, method):
      task: str, method: str — tasks and methods are drawn in the order they first appear;
      delta, lo, hi: float | None — Δ accuracy vs the base and its paired 95% interval, as
        fractions (0.031 = +3.1 points; the units of report["evaluation"]["rows"][*]["diff"]);
      abstained: bool — the method's gate abstained, so its model is the base (Δ = 0).
    A row with delta None (and not abstained) is drawn as "no data".
    """
    rows = [_mapping(r) for r in _list(rows)]
    tasks = list(dict.fromkeys(str(r.get("task", "?")) for r in rows))
    methods = list(dict.fromkeys(str(r.get("method", "?")) for r in rows))
    ncols = min(len(tasks), 2) or 1
    nrows = max(1, math.ceil(len(tasks) / ncols))
    fig = Figure(figsize=(WIDTH_IN, nrows * (0.9 + 0.38 * max(len(methods), 2))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel())
    fig.suptitle("fidelity benchmark: held-out accuracy Δ vs base, paired 95% CI", fontsize=12)
    if not rows:
        _no_data(axes[0], "summary", "no benchmark rows")
        return fig
    ys = {m: len(methods) - 1 - i for i, m in enumerate(methods)}
    for ax, name in zip(axes, tasks):
        for r in (r for r in rows if str(r.get("task", "?")) == name):
            _summary_point(ax, ys[str(r.get("method", "?"))], r)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(name, loc="left")
        ax.set_xlabel("Δ vs base (points)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(list(ys.values()), list(ys), fontsize=9)
        ax.set_ylim(-0.7, len(methods) - 0.3)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    return fig


def _summary_point(ax: Axes, y: int, row: dict[str, Any]) -> None:
    delta, low, high = (finite(row.get(k)) for k in ("delta", "lo", "hi"))
    if row.get("abstained") is True:
        ax.plot([0], [y], "o", markerfacecolor="white", markeredgecolor=OTHER, markersize=7)
        ax.annotate("abstained (= base)", (0, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8, color="dimgray")
    elif delta is None:
        ax.annotate("no data", (0, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8, color="dimgray")
    else:
        ax.errorbar([100 * delta], [y], xerr=_xerr(delta, low, high), fmt="o", color=MERGED, capsize=3, markersize=6)


def write_summary_png(rows: list[dict[str, Any]], path: Path) -> Path:
    """Draw ``summary_figure(rows)`` to ``path`` (PNG, 800 px wide); returns the path."""
    return _save(summary_figure(rows), path, "corpmerge fidelity benchmark summary")
