"""Render a run report (report.json) as terminal tables; the report is semi-trusted, so odd values show as "—"."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from corpmerge.errors import CorpmergeError, first_line

REPORT_FILE = "report.json"


def finite(value: Any) -> float | None:
    """A finite number, or None for anything else (missing, NaN, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pct(value: Any) -> str:
    value = finite(value)
    return "—" if value is None else f"{100 * value:.1f}%"


def _signed(value: Any, digits: int = 4) -> str:
    value = finite(value)
    return "—" if value is None else f"{value:+.{digits}f}"


def mapping(value: Any) -> dict[str, Any]:
    """The value if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def model_label(key: str, report: dict[str, Any]) -> str:
    """Display name of a held-out row: base, RandOpt K=1, a top-K vote or the merged model."""
    if key == "base":
        return "base"
    ranked = mapping(report.get("evaluation")).get("ranked_on")
    by = f", ranked on {ranked}" if isinstance(ranked, str) else ""
    if key == "best_entry":
        return f"RandOpt K=1 (best entry{by})"
    if key.startswith("randopt_top"):
        k = key[len("randopt_top"):]
        return f"RandOpt top-{k} vote ({k} passes{by})"
    if key == "stage1":
        return "stage 1 (the centre stage 2 started from)"
    if key == "merged":
        gated = mapping(report.get("gate")).get("enabled")
        return f"{report.get('method', 'merged')} ({'gated' if gated else 'merged'})"
    return key


def evaluation_scope(evaluation: dict[str, Any]) -> str:
    """The "task1, task2 (split)" of a held-out evaluation, leaving out what is missing."""
    tasks = evaluation.get("tasks")
    scope = ", ".join(str(t) for t in tasks) if isinstance(tasks, list) else ""
    return f"{scope} ({evaluation['split']})".strip() if evaluation.get("split") else scope


def _row_order(key: str) -> tuple[int, int, str]:
    if key.startswith("randopt_top"):
        k = key[len("randopt_top"):]
        return (2, int(k) if k.isdigit() else 0, key)
    return ({"base": 0, "best_entry": 1, "merged": 3}.get(key, 4), 0, key)


def ordered_rows(rows: Any) -> list[tuple[str, dict[str, Any]]]:
    """The held-out rows that are dicts: base, K=1, the votes by K, the merged model, then anything else."""
    return sorted(((str(k), v) for k, v in mapping(rows).items() if isinstance(v, dict)), key=lambda kv: _row_order(kv[0]))


def report_view(report: dict[str, Any], report_path: str | Path | None = None, picture: str | Path | None = None) -> RenderableType:
    """Fold table, gate outcome, held-out table, timings and where things were written."""
    folds = _folds_table(report)
    parts: list[RenderableType] = [folds] if folds.row_count else []
    parts += [_gate_line(report), *evaluation_view(report)]
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in mapping(report.get("timings_s")).items() if finite(v) is not None)
    parts.append(Text(f"time: {timings or '—'}; {report.get('evaluations', 0)} evaluations"))
    if report.get("output"):
        parts.append(Text.assemble(("model", "green"), f" → {report['output']}"))
    report_path = report_path or report.get("report_path")
    if report_path:
        parts.append(Text(f"report → {report_path}"))
    if picture:
        parts.append(Text(f"picture → {picture}"))
    return Group(*parts)


def render_report(console: Console, report: dict[str, Any]) -> None:
    """Print ``report_view(report)``."""
    console.print(report_view(report))


def _folds_table(report: dict[str, Any]) -> Table:
    folds = Table("fold", "examples", "base", "chosen", title=f"{report.get('method', '?')} on {report.get('base_model', '?')}")
    base, chosen, counts = mapping(report.get("base")), mapping(report.get("chosen")), mapping(report.get("folds"))
    for fold, name in (("A", "A construct"), ("B", "B validate"), ("C", "C probe")):
        if fold in base:
            folds.add_row(name, str(counts.get(fold, "—")), _pct(base[fold]), _pct(chosen.get(fold)))
    return folds


def _gate_line(report: dict[str, Any]) -> Text:
    gate = mapping(report.get("gate"))
    if "accepted" not in gate:
        return Text("gate: no outcome recorded in the report")
    if gate.get("accepted") and gate.get("fixes") is not None:
        return Text.assemble(
            ("gate passed", "green"),
            f": params {gate.get('params')}, multiplier {gate.get('multiplier')}; fold B fixes {gate.get('fixes')}, "
            f"regressions {gate.get('regressions')}, S {_signed(gate.get('constructive_score'))}, LCB {_signed(gate.get('lcb'))}; "
            f"fold C LCB {_signed(gate.get('probe_lcb'))} ({report.get('candidates_tried', '?')} candidates tried)",
        )
    if gate.get("accepted"):
        return Text(f"gate disabled: merged with {gate.get('params')}")
    return Text.assemble(
        ("ABSTAINED", "bold yellow"),
        f": {gate.get('reason', 'no candidate passed')}. The base model is the answer; no merged model was kept.",
    )


def evaluation_view(report: dict[str, Any]) -> list[RenderableType]:
    """The held-out table (base, RandOpt K=1 and top-K votes, the merged model), or nothing without an evaluation."""
    evaluation = mapping(report.get("evaluation"))
    rows = ordered_rows(evaluation.get("rows"))
    if not rows:
        return []
    held = Table("model", "accuracy", "Δ vs base", "95% CI", "n", title=f"held-out: {evaluation_scope(evaluation)}".rstrip())
    for key, row in rows:
        diff, low, high = (finite(row.get(k)) for k in ("diff", "ci_low", "ci_high"))
        held.add_row(
            Text(model_label(key, report)), _pct(row.get("accuracy")),
            "—" if diff is None else f"{100 * diff:+.1f} pts",
            "—" if low is None or high is None else f"[{100 * low:+.1f}, {100 * high:+.1f}]",
            str(row.get("n", "—")),
        )
    parts: list[RenderableType] = [held]
    excluded = mapping(evaluation.get("excluded_support"))
    if excluded:
        parts.append(Text("; ".join(f"{n} examples of {t} ({evaluation.get('split')}) are support examples and were left out" for t, n in sorted(excluded.items()))))
    fraction = finite(evaluation.get("recovered_fraction"))
    if fraction is not None:
        parts.append(Text(f"the merged model's gain over the base is {fraction:.2f}× the largest ensemble's gain"))
    return parts


def render_evaluation(console: Console, report: dict[str, Any]) -> None:
    """Print the held-out table (used by ``corpmerge ensemble``)."""
    for part in evaluation_view(report):
        console.print(part)


def load_report(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The report in an output or work folder (or a report.json path): (report, its path).

    A folder without report.json falls back to its default work folder ``<folder>.work``, where
    an abstained run leaves its report.
    """
    path = Path(path)
    candidates = [path] if path.suffix == ".json" else [path / REPORT_FILE, Path(f"{path}.work") / REPORT_FILE]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CorpmergeError(f"report: no {REPORT_FILE} in {path} (pass the run's output folder or work folder)")
    try:
        report = json.loads(found.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpmergeError(f"report: {found} is not a readable JSON report ({first_line(exc)})") from None
    if not isinstance(report, dict):
        raise CorpmergeError(f"report: {found} does not hold a JSON object")
    return report, found
