"""The paper's comparison at CPU scale: one scored population, every method through the gate, the same test examples.

Usage: python bench/fidelity.py [--recipe recipes/demo.yaml] [--seeds 42 1 2] [--tasks corpmerge_arith]
                                [--work ./fidelity.work] [--out BENCHMARKS-fidelity.md]

For each task × population seed, one score store holds everything: the population is scored once
(with racing as shipped), then `run` is repeated with each method on the same folds — CoRP stage 1,
CoRP + stage 2, reward_avg, topk_subspace, ties — each through the gate as the recipe would run it,
with RandOpt K = 1 and the top-5/top-20 votes on the same test examples. A rerun reuses every
stored score (it costs nothing). Rows: accuracy, Δ vs the base and Δ vs K = 1 with paired 95%
intervals; an abstention is reported as such, with the base's score. Prints a markdown table and
writes it (with the command and wall time) to --out, and a summary figure next to it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from corpmerge.pipeline import run_recipe
from corpmerge.recipe import IterateSpec, Recipe, load_recipe
from corpmerge.report.plots import write_summary_png

VARIANTS: dict[str, dict[str, Any]] = {
    "CoRP stage 1": {"merge_method": "corp", "iterate": None},
    "CoRP + stage 2": {"merge_method": "corp", "iterate": IterateSpec(rounds=2, local_size=10, rank=4)},
    "reward_avg": {"merge_method": "reward_avg", "iterate": None},
    "topk_subspace": {"merge_method": "topk_subspace", "iterate": None},
    "ties": {"merge_method": "ties", "iterate": None},
}
GRIDS = {  # each method's own grid over what it has (the gate chooses)
    "corp": None,  # the recipe's
    "reward_avg": {"quantile": [0.7], "beta": [5, 20], "alpha": [1, 2, 4]},
    "topk_subspace": {"quantile": [0.7], "beta": [5, 20], "k": [4], "alpha": [1, 2, 4]},
    "ties": {"quantile": [0.7], "density": [0.2, 0.5]},
}


def variant(recipe: Recipe, task: str, seed: int, work: Path, name: str, change: dict[str, Any]) -> Recipe:
    method = change["merge_method"]
    scoring = recipe.scoring.model_copy(update={
        "tasks": [task], "store": str(work / f"{task}-{seed}.sqlite"),
        "support": recipe.scoring.support.model_copy(update={"split_seed": seed}),
    })
    evaluate = (recipe.evaluate or None).model_copy(update={"tasks": [task], "ensemble_k": [1, 5, 20]})
    update: dict[str, Any] = {
        "scoring": scoring, "evaluate": evaluate, "merge_method": method,
        "population": recipe.population.model_copy(update={"seed": seed}),
        "parameters": GRIDS[method] if GRIDS[method] is not None else recipe.parameters,
    }
    if "iterate" in change:
        update["iterate"] = change["iterate"]
    slug = name.lower().replace(" ", "-").replace("+", "plus")
    return recipe.model_copy(update=update).with_output(work / f"{task}-{seed}-{slug}")


def rows_of(report: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """Table rows of one run: the baselines (once per store) and the method's merged model or its abstention."""
    rows = report["evaluation"]["rows"]
    out = {"base": rows["base"], "RandOpt K=1": rows["best_entry"]}
    for k in (5, 20):
        out[f"RandOpt top-{k} vote"] = rows[f"randopt_top{k}"]
    out[name] = rows.get("merged") or {**rows["base"], "abstained": True, "reason": report["gate"]["reason"]}
    return out


def fmt(row: dict[str, Any], key: str | None = None) -> str:
    part = row.get(key) if key else row
    if not part or "diff" not in part:
        return "—"
    return f"{100 * part['diff']:+.1f} [{100 * part['ci_low']:+.1f}, {100 * part['ci_high']:+.1f}]"


def kept_share(table: dict[str, dict[str, Any]], name: str) -> str:
    """Share of the top-20 vote's gain over the base that ``name`` keeps: Δ(name) / Δ(top-20 vote)."""
    vote, row = table["RandOpt top-20 vote"].get("diff"), table[name]
    gain = 0.0 if row.get("abstained") else row.get("diff", 0.0)
    if vote is None or vote <= 0:
        return f"— (the vote gained {100 * (vote or 0):+.1f})"
    return f"{100 * gain / vote:.0f}% of {100 * vote:+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["corpmerge_arith"])
    parser.add_argument("--work", default="./fidelity.work")
    parser.add_argument("--out", default="fidelity.md")
    args = parser.parse_args()
    started = time.perf_counter()
    recipe, work = load_recipe(args.recipe), Path(args.work)
    lines = ["| task | seed | model | accuracy | Δ vs base (95% CI) | Δ vs K=1 (95% CI) | note |", "|---|---|---|---|---|---|---|"]
    summary, shares = [], ["| task | seed | CoRP stage 1 | CoRP + stage 2 |", "|---|---|---|---|"]
    for task in args.tasks:
        for seed in args.seeds:
            table: dict[str, dict[str, Any]] = {}
            for name, change in VARIANTS.items():
                report = run_recipe(variant(recipe, task, seed, work, name, change), overwrite=True)
                print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {task} seed {seed}: {name} done", flush=True)
                table.update(rows_of(report, name))
            shares.append(f"| {task} | {seed} | {kept_share(table, 'CoRP stage 1')} | {kept_share(table, 'CoRP + stage 2')} |")
            for name, row in table.items():
                note = "abstained (= base)" if row.get("abstained") else ""
                lines.append(f"| {task} | {seed} | {name} | {100 * row['accuracy']:.1f}% | {fmt(row)} | {fmt(row, 'vs_k1')} | {note} |")
                if name != "base":
                    summary.append({"task": f"{task} (seed {seed})", "method": name, "delta": row.get("diff"),
                                    "lo": row.get("ci_low"), "hi": row.get("ci_high"), "abstained": bool(row.get("abstained"))})
    wall = time.perf_counter() - started
    text = "\n".join(lines) + "\n\nShare of the top-20 vote's gain that CoRP keeps (an abstention keeps 0):\n\n" + "\n".join(shares)
    command = "python bench/fidelity.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    figure = write_summary_png(summary, Path(args.out).with_suffix(".png"))
    Path(args.out).write_text(f"`{command}` — {wall / 60:.0f} min wall\n\n{text}\n\n![summary]({figure.name})\n")
    print(text)
    print(f"wall {wall / 60:.1f} min; table → {args.out}; figure → {figure}")


if __name__ == "__main__":
    main()
