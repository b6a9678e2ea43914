"""Render a run report (report.json, checked against ``corpmerge.output.report_schema``) as terminal tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from corpmerge.errors import CorpmergeError, counted
from corpmerge.output.report_schema import REPORT_FILE, HeldOut, HeldOutRow, RunReport, read_report


def finite(value: Any) -> float | None:
    """A finite number, or None (missing, NaN, ±inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pct(value: float | None) -> str:
    value = finite(value)
    return "—" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None, digits: int = 4) -> str:
    value = finite(value)
    return "—" if value is None else f"{value:+.{digits}f}"


def model_label(key: str, evaluation: HeldOut, method: str, gated: bool = False, ranked: bool = True) -> str:
    """Display name of a held-out row: base, RandOpt K=1, a top-K vote or the merged model
    (``ranked``: say what the RandOpt rows were ranked on)."""
    if key == "base":
        return "base"
    by = f", ranked on {evaluation.ranked_on}" if ranked and evaluation.ranked_on else ""
    if key == "best_entry":
        return f"RandOpt K=1 (best entry{by})"
    if key.startswith("randopt_top"):
        k = key[len("randopt_top") :]
        return f"RandOpt top-{k} vote ({k} {'pass' if k == '1' else 'passes'}{by})"
    if key == "stage1":
        return "stage 1 (the centre stage 2 started from)"
    if key == "merged":
        return f"{method} ({'gated' if gated else 'merged'})"
    return key


def evaluation_scope(evaluation: HeldOut) -> str:
    """The "task1, task2 (split)" of a held-out evaluation."""
    return f"{', '.join(evaluation.tasks)} ({evaluation.split})".strip()


def _row_order(key: str) -> tuple[int, int, str]:
    if key.startswith("randopt_top"):
        k = key[len("randopt_top") :]
        return (2, int(k) if k.isdigit() else 0, key)
    return ({"base": 0, "best_entry": 1, "merged": 3}.get(key, 4), 0, key)


def ordered_rows(evaluation: HeldOut) -> list[tuple[str, HeldOutRow]]:
    """The held-out rows: base, K=1, the votes by K, the merged model, then anything else; a top-1 vote is RandOpt
    K=1's own predictions, so beside the best entry's row it is left out (one model, one row)."""
    rows = [(k, r) for k, r in evaluation.rows.items() if not (k == "randopt_top1" and "best_entry" in evaluation.rows)]
    return sorted(rows, key=lambda kv: _row_order(kv[0]))


def report_view(report: RunReport, report_path: str | Path | None = None, picture: str | Path | None = None) -> RenderableType:
    """Fold table, gate outcome, held-out table, timings and where things were written."""
    folds = _folds_table(report)
    parts: list[RenderableType] = [folds] if folds.row_count else []
    parts += [_gate_line(report), *evaluation_view(report.evaluation, report.method, report.gate.enabled)]
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.timings_s.items() if finite(v) is not None)
    parts.append(Text(f"time: {timings or '—'}; {report.evaluations} evaluations"))
    if report.output:
        parts.append(Text.assemble(("model", "green"), f" → {report.output}"))
    if report_path:
        parts.append(Text(f"report → {report_path}"))
    if picture:
        parts.append(Text(f"picture → {picture}"))
    return Group(*parts)


def render_report(console: Console, report: RunReport, report_path: str | Path | None = None) -> None:
    """Print ``report_view(report, report_path)``."""
    console.print(report_view(report, report_path))


def _folds_table(report: RunReport) -> Table:
    folds = Table("fold", "examples", "base", "chosen", title=f"{report.method} on {report.base_model}")
    for fold, name in (("A", "A construct"), ("B", "B validate"), ("C", "C probe")):
        if fold in report.base:
            folds.add_row(name, str(report.folds.get(fold, "—")), _pct(report.base[fold]), _pct(report.chosen.get(fold)))
    return folds


def _gate_line(report: RunReport) -> Text:
    gate = report.gate
    if gate.accepted and gate.fixes is not None:
        return Text.assemble(
            ("gate passed", "green"),
            f": params {gate.params}, multiplier {gate.multiplier}; fold B fixes {gate.fixes}, "
            f"regressions {gate.regressions}, S {_signed(gate.constructive_score)}, LCB {_signed(gate.lcb)}; "
            f"fold C LCB {_signed(gate.probe_lcb)} ({counted(report.candidates_tried, 'candidate')} tried)",
        )
    if gate.accepted:
        return Text(f"gate disabled: merged with {gate.params}")
    return Text.assemble(
        ("ABSTAINED", "bold yellow"),
        f": {gate.reason}. The base model is the answer; no merged model was kept.",
    )


def evaluation_view(evaluation: HeldOut | None, method: str, gated: bool = False) -> list[RenderableType]:
    """The held-out table (base, RandOpt K=1 and top-K votes, the merged model), or nothing without an evaluation."""
    if evaluation is None or not evaluation.rows:
        return []

    def rows_table(title: str, rows: Any) -> Table:
        table = Table("model", "accuracy", "Δ vs base", "95% CI", "n", title=title)
        for key, row in rows:
            diff, low, high = finite(row.diff), finite(row.ci_low), finite(row.ci_high)
            table.add_row(
                Text(model_label(key, evaluation, method, gated)),
                _pct(row.accuracy),
                "—" if diff is None else f"{100 * diff:+.1f} pts",
                "—" if low is None or high is None else f"[{100 * low:+.1f}, {100 * high:+.1f}]",
                str(row.n),
            )
        return table

    parts: list[RenderableType] = [rows_table(f"held-out: {evaluation_scope(evaluation)}", ordered_rows(evaluation))]
    if evaluation.clustered_by:
        parts.append(Text(evaluation.clustering_note()))
    for task, other in sorted(evaluation.other_tasks.items()):  # evaluate.tasks the support does not train
        parts.append(rows_table(f"held-out, not trained by the support: {task} ({evaluation.split})", other.rows.items()))
    if evaluation.excluded_support:
        parts.append(
            Text(
                "; ".join(
                    f"{n} examples of {t} ({evaluation.split}) are support examples and were left out" for t, n in sorted(evaluation.excluded_support.items())
                )
            )
        )
    fraction = shown_fraction(evaluation)
    if fraction is not None:
        parts.append(Text(f"the merged model's gain over the base is {fraction:.2f}× the largest vote's gain (both gains' 95% intervals exclude 0)"))
    return parts


def shown_fraction(evaluation: HeldOut) -> float | None:
    """The report's merged-gain ÷ largest-vote-gain ratio, only where both gains' 95% intervals exclude 0 (a report
    written before that rule may hold a ratio of gains not shown to exist)."""
    fraction = finite(evaluation.recovered_fraction)
    votes = [k for k in evaluation.rows if k.startswith("randopt_top") and k[len("randopt_top") :].isdigit()]
    rows = [evaluation.rows.get("merged"), evaluation.rows[max(votes, key=lambda k: int(k[len("randopt_top") :]))] if votes else None]
    for row in rows:
        low, high = (finite(row.ci_low), finite(row.ci_high)) if row is not None else (None, None)
        if low is None or high is None or low <= 0 <= high:
            return None
    return fraction


def render_evaluation(console: Console, evaluation: HeldOut, method: str) -> None:
    """Print the held-out table (used by ``corpmerge ensemble``)."""
    for part in evaluation_view(evaluation, method):
        console.print(part)


def load_report(path: str | Path) -> tuple[RunReport, Path]:
    """The report in an output or work folder (or a report.json path): (report, its path).

    A folder without report.json falls back to its default work folder ``<folder>.work``, where
    an abstained run leaves its report.
    """
    path = Path(path)
    candidates = [path] if path.suffix == ".json" else [path / REPORT_FILE, Path(f"{path}.work") / REPORT_FILE]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CorpmergeError(f"report: no {REPORT_FILE} in {path} (pass the run's output folder or work folder)")
    return read_report(found), found
