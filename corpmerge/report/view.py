"""Render a run report as terminal tables (used by the CLI)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def render_report(console: Console, report: dict[str, Any]) -> None:
    """Fold table, gate outcome, held-out table, timings and where things were written."""
    _render_folds(console, report)
    render_evaluation(console, report)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.get("timings_s", {}).items())
    console.print(f"time: {timings}; {report.get('evaluations', 0)} evaluations", highlight=False)
    if report.get("output"):
        console.print(f"[green]model[/] → {report['output']}", highlight=False)
    console.print(f"report → {report['report_path']}", highlight=False)


def _render_folds(console: Console, report: dict[str, Any]) -> None:
    folds = Table("fold", "examples", "base", "chosen", title=f"{report['method']} on {report['base_model']}")
    chosen = report.get("chosen", {})
    for fold, name in (("A", "A construct"), ("B", "B validate"), ("C", "C probe")):
        if fold in report["base"]:
            folds.add_row(name, str(report["folds"][fold]), _pct(report["base"][fold]), _pct(chosen.get(fold)))
    console.print(folds)
    gate = report["gate"]
    if gate["accepted"] and gate.get("fixes") is not None:
        console.print(
            f"[green]gate passed[/]: params {gate['params']}, multiplier {gate['multiplier']}; fold B fixes {gate['fixes']}, "
            f"regressions {gate['regressions']}, S {gate['constructive_score']:+.4f}, LCB {gate['lcb']:+.4f}; "
            f"fold C LCB {gate['probe_lcb']:+.4f} ({report['candidates_tried']} candidates tried)",
            highlight=False,
        )
    elif gate["accepted"]:
        console.print(f"gate disabled: merged with {gate['params']}", highlight=False)
    else:
        console.print(f"[bold yellow]ABSTAINED[/]: {gate['reason']}. The base model is the answer; no merged model was kept.", highlight=False)


def render_evaluation(console: Console, report: dict[str, Any]) -> None:
    """The held-out table: base, RandOpt K=1 and top-K votes, the merged model."""
    evaluation = report.get("evaluation")
    if evaluation:
        held = Table("model", "accuracy", "Δ vs base", "95% CI", "n", title=f"held-out: {', '.join(evaluation['tasks'])} ({evaluation['split']})")
        labels = {"base": "base", "best_entry": "RandOpt K=1 (best entry)", "merged": f"{report['method']} ({'gated' if report.get('gate', {}).get('enabled') else 'merged'})"}
        for key, row in evaluation["rows"].items():
            if key.startswith("randopt_top"):
                labels[key] = f"RandOpt top-{key[len('randopt_top'):]} vote ({key[len('randopt_top'):]} passes)"
            diff = "—" if "diff" not in row else f"{100 * row['diff']:+.1f} pts"
            ci = "—" if "diff" not in row else f"[{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"
            held.add_row(labels.get(key, key), _pct(row["accuracy"]), diff, ci, str(row["n"]))
        console.print(held)
        fraction = evaluation.get("recovered_fraction")
        if fraction is not None:
            console.print(f"the merged model's gain over the base is {fraction:.2f}× the largest ensemble's gain", highlight=False)
