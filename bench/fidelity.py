"""The paper's comparison at CPU scale: one scored population, every method through the gate, the same test examples.

Usage: python bench/fidelity.py [--recipe recipes/demo.yaml] [--seeds 42 1 2] [--tasks corpmerge_arith]
                                [--work ./fidelity.work] [--out BENCHMARKS-fidelity.md] [--local-size 40]

For each task × population seed, one score store holds everything: the population is scored once
(with racing as shipped), then `run` is repeated with each method on the same folds, each through
the gate as the recipe would run it, with RandOpt K = 1 and the top-K votes (--votes, default 5 20) on the same test
examples:

- CoRP stage 1, and CoRP + stage 2 as the paper defines it (every round runs the whole gate on its
  local population of --local-size perturbations; its row says how many rounds were accepted and
  what stage 2 added over stage 1 on test, paired on the same examples);
- what the compatibility terms buy: reward_avg (γ = λ = 0) on the same grid; reward_avg at the β
  whose weights have the ESS of CoRP's chosen candidate (same q, α chosen by the gate), which
  separates "fewer effective elites" from "the right elites"; and `corp_placebo`, a bench-only
  method (registered below): CoRP whose compatibility logits γ·z(a) − λ·z(d) are permuted across
  the elites, so the weights keep their spread but lose their link to alignment and dispersion;
- topk_subspace and ties;
- es (the whole population's z-scored or ranked estimator) on the same population, and on a mirrored
  population of the same size ((s, ±σ) pairs, scored in the same store: es uses every entry, so racing
  stops none of either).

Every β grid includes the paper's small values (0.5, 1, 2). A rerun reuses every stored score (it
costs nothing). Rows: accuracy, Δ vs the base and Δ vs K = 1 with paired 95% intervals, the chosen
candidate's ESS = 1/Σw² (and, for CoRP, without the compatibility terms); an abstention is reported
as such, with the base's score. Prints a markdown table and writes it (with the command and wall
time) to --out, and a summary figure next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from held_out import question_clusters, shipped_subject, test_vector
from pydantic import Field

from corpmerge.amplitudes import Cloud
from corpmerge.gate.paired import clustered_interval
from corpmerge.methods import MergeResult, merge_method
from corpmerge.methods.corp import CorpParams, compatibility_logits, corp_result
from corpmerge.methods.weights import effective_size, elite_indices, softmax
from corpmerge.pipeline import run_recipe
from corpmerge.progress import log_reporter, set_reporter
from corpmerge.recipe import EvaluateSpec, IterateSpec, Recipe, load_recipe
from corpmerge.report.plots import write_summary_png


class PlaceboParams(CorpParams):
    shuffle_seed: int = Field(default=0, ge=0, description="seed of the permutation of the compatibility logits")


@merge_method("corp_placebo", PlaceboParams, elites="quantile", step="alpha", temperature="beta")
def corp_placebo(cloud: Cloud, p: PlaceboParams) -> MergeResult:
    """CoRP with its compatibility logits γ·z(a) − λ·z(d) permuted across the elites (a placebo; bench only)."""
    elite = elite_indices(cloud.rewards, p.quantile)
    compat = compatibility_logits(cloud, elite, softmax(p.beta * cloud.rewards[elite]), p)
    order = np.random.default_rng([p.shuffle_seed, elite.size]).permutation(elite.size)
    return corp_result(cloud, p, "corp_placebo", compat[order], elite)


BETA_GRID = {"quantile": [0.7], "beta": [0.5, 1, 2, 5, 20], "alpha": [1, 2, 4]}
VARIANTS: dict[str, dict[str, Any]] = {
    "CoRP stage 1": {"merge_method": "corp", "iterate": None},
    "CoRP + stage 2": {"merge_method": "corp", "iterate": "stage2"},
    "CoRP placebo": {"merge_method": "corp_placebo", "iterate": None},
    "reward_avg": {"merge_method": "reward_avg", "iterate": None},
    "reward_avg at CoRP's ESS": {"merge_method": "reward_avg", "iterate": None, "match_ess_of": "CoRP stage 1"},
    "topk_subspace": {"merge_method": "topk_subspace", "iterate": None},
    "ties": {"merge_method": "ties", "iterate": None},
    "es": {"merge_method": "es", "iterate": None},
    "es mirrored": {"merge_method": "es", "iterate": None, "antithetic": True},
}
GRIDS = {  # each method's own grid over what it has (the gate chooses)
    "corp": BETA_GRID,
    "corp_placebo": BETA_GRID,
    "reward_avg": BETA_GRID,
    "topk_subspace": {**BETA_GRID, "k": [4]},
    "ties": {"quantile": [0.7], "density": [0.2, 0.5]},
    "es": {"shaping": ["zscore", "rank"], "alpha": [3, 6, 12]},  # spans CoRP's step at α 1–4 (bench/demo_seeds.py)
}


def chosen_record(report: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate record the run shipped (its gate's accepted one), else its top-ranked one on fold B."""
    candidates = report.get("candidates") or []
    params = report["gate"].get("params")
    return next((c for c in candidates if c["params"] == params), candidates[0] if candidates else None)


def matching_beta(rewards: np.ndarray, quantile: float, ess: float) -> float:
    """β at which softmax(β·r) over the elites at ``quantile`` has effective size ``ess`` (bisection in log β;
    the ESS falls from |E| at β = 0 to 1 as β grows)."""
    r = rewards[elite_indices(rewards, quantile)]
    if ess >= effective_size(np.ones(r.size)) - 1e-9:
        return 0.0
    lo, hi = -6.0, 6.0  # log10 β
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if effective_size(softmax(10**mid * r)) > ess else (lo, mid)
    return float(10 ** ((lo + hi) / 2))


def variant(
    recipe: Recipe, task: str, seed: int, work: Path, name: str, change: dict[str, Any], grid: dict[str, Any], stage2: IterateSpec, votes: list[int]
) -> Recipe:
    scoring = recipe.scoring.model_copy(
        update={
            "tasks": [task],
            "store": str(work / f"{task}-{seed}.sqlite"),
            "support": recipe.scoring.support.model_copy(update={"split_seed": seed}),
        }
    )
    evaluate = (recipe.evaluate or EvaluateSpec()).model_copy(update={"tasks": [task], "ensemble_k": [1, *votes]})
    update: dict[str, Any] = {
        "scoring": scoring,
        "evaluate": evaluate,
        "merge_method": change["merge_method"],
        "population": recipe.population.model_copy(update={"seed": seed, "antithetic": bool(change.get("antithetic"))}),
        "parameters": grid,
        "iterate": stage2 if change["iterate"] == "stage2" else None,
    }
    slug = name.lower().replace(" ", "-").replace("+", "plus").replace("'", "")
    return recipe.model_copy(update=update).with_output(work / f"{task}-{seed}-{slug}")


def grid_for(name: str, change: dict[str, Any], reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The variant's grid; for ``match_ess_of``: the matched method's q, the β giving its chosen candidate's ESS, α as usual."""
    source = change.get("match_ess_of")
    if source is None:
        return GRIDS[change["merge_method"]]
    record = chosen_record(reports[source])
    rewards = np.array(reports[source]["population"]["rewards"], dtype=float)
    quantile = float(record["params"]["quantile"])
    return {"quantile": quantile, "beta": matching_beta(rewards, quantile, record["ess"]), "alpha": BETA_GRID["alpha"]}


def rows_of(report: dict[str, Any], name: str, votes: list[int]) -> dict[str, dict[str, Any]]:
    """Table rows of one run: the baselines (once per store) and the method's merged model or its abstention."""
    rows = report["evaluation"]["rows"]
    out = {"base": rows["base"], "RandOpt K=1": rows["best_entry"]}
    for k in votes:
        out[f"RandOpt top-{k} vote"] = rows[f"randopt_top{k}"]
    out[name] = rows.get("merged") or {**rows["base"], "abstained": True, "reason": report["gate"]["reason"]}
    out[name] = {**out[name], "weights": weights_note(report), "step": shipped_step(report)}
    return out


def ess_text(record: dict[str, Any] | None) -> str:
    if not record:
        return "—"
    plain = record.get("ess_without_compatibility")
    return f"{record['ess']:.1f} of {record['elites']}" + (f" ({plain:.1f} at γ = λ = 0)" if plain is not None else "")


def weights_note(report: dict[str, Any]) -> str:
    """ESS of the shipped candidate (the last accepted stage-2 round's, if any), else of the top-ranked one, marked so."""
    accepted = [r for r in (report.get("stage2") or {}).get("rounds", []) if r["accepted"]]
    if accepted:
        last = accepted[-1]
        return ess_text(next(c for c in last["candidates"] if c["params"] == last["params"])) + f" (stage-2 round {last['round']})"
    record = chosen_record(report)
    return ess_text(record) + ("" if report["gate"].get("accepted") else " (top-ranked, not shipped)")


def shipped_step(report: dict[str, Any]) -> str:
    """Per-coordinate RMS (×10⁻³) of each shipped step: stage 1's m·Δ, then each accepted stage-2 round's m·step."""
    gate = report["gate"]
    if not gate.get("accepted") or gate.get("step_rms") is None:
        return "—"
    rounds = [r for r in (report.get("stage2") or {}).get("rounds", []) if r["accepted"]]
    return " + ".join([f"{1e3 * gate['step_rms']:.2f}"] + [f"{1e3 * r['step_rms'] * r['multiplier']:.2f} (round {r['round']})" for r in rounds])


def stage2_lines(task: str, seed: int, report: dict[str, Any]) -> list[str]:
    """One line per stage-2 round: σ, outcome, chosen point and step, fold-B counts, ESS, and what it added on test."""
    out = []
    vs = (report["evaluation"]["rows"].get("merged") or {}).get("vs_stage1")
    for r in (report.get("stage2") or {}).get("rounds", []):
        top = next((c for c in r["candidates"] if c["params"] == r["params"]), r["candidates"][0])
        point = ", ".join(f"{k} {v:g}" for k, v in top["params"].items() if k in ("quantile", "beta", "alpha"))
        outcome = f"accepted ×{r['multiplier']:g}" if r["accepted"] else "rejected: " + r["reason"]
        out.append(
            f"| {task} | {seed} | {r['round']} | {r['sigma']:.3g} | {outcome} | {point} | "
            f"{r['validate']['fixes']} / {r['validate']['regressions']} | {ess_text(top)} |"
        )
    if vs is not None:
        out.append(f"| {task} | {seed} | all | | stage 2 − stage 1 on test: {fmt(vs)} | | | |")
    return out


def shipped_test(store: Path, output: Path, report: dict[str, Any], split: str) -> dict[str, Any]:
    """The shipped model's per-example correctness on the store's test examples (an abstention ships the base) and
    their clusters (``metadata.cluster_by``; None when the task declares none): every variant of a task × seed
    was evaluated on the same examples."""
    keys, vector = test_vector(store, shipped_subject(output, bool(report["gate"].get("accepted"))))
    return {"test": vector, "clusters": question_clusters(keys, sorted({t for t, _ in keys}), split)}


def vs_stage1(table: dict[str, dict[str, Any]], name: str) -> str:
    """Paired Δ of ``name``'s shipped model against CoRP stage 1's on the same test examples (an abstention is the
    base), clustered as the task declares, like the report's intervals."""
    ours, ref = table[name].get("test"), table.get("CoRP stage 1", {}).get("test")
    if name in ("base", "CoRP stage 1") or ours is None or ref is None or ours.size != ref.size:
        return ""
    diff, low, high = clustered_interval(ref, ours, table[name]["clusters"])
    return f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def read_report(output: Path) -> dict[str, Any] | None:
    """A finished run's report.json (``--table-only``): the output folder's, or the work folder's when the gate
    abstained (whichever is newer); None when that run has not finished."""
    paths = [p for p in (output / "report.json", output.with_name(output.name + ".work") / "report.json") if p.is_file()]
    return json.loads(max(paths, key=lambda p: p.stat().st_mtime).read_text()) if paths else None


def fmt(row: dict[str, Any], key: str | None = None) -> str:
    part = row.get(key) if key else row
    if not part or "diff" not in part:
        return "—"
    return f"{100 * part['diff']:+.1f} [{100 * part['ci_low']:+.1f}, {100 * part['ci_high']:+.1f}]"


def kept_share(table: dict[str, dict[str, Any]], name: str, k: int) -> str:
    """Share of the top-k vote's gain over the base that ``name`` keeps: Δ(name) / Δ(top-k vote)."""
    vote, row = table[f"RandOpt top-{k} vote"].get("diff"), table[name]
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
    parser.add_argument("--local-size", type=int, default=40, help="stage 2's local population (40: 13 elites at q = 0.7)")
    parser.add_argument("--table-only", action="store_true", help="build the table from the runs' report.json files in --work; run nothing")
    parser.add_argument("--log", help="write the runs' log (phases, progress every minute) to this file")
    parser.add_argument("--rounds", type=int, default=2, help="stage 2's rounds (accepted ones; it stops at the first rejected round)")
    parser.add_argument("--votes", type=int, nargs="+", default=[5, 20], help="RandOpt top-K votes reported beside K = 1")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME", help=f"rows to run (default all: {', '.join(VARIANTS)})"
    )
    args = parser.parse_args()
    for name in args.variants:
        source = VARIANTS[name].get("match_ess_of")
        if source and source not in args.variants:
            parser.error(f"--variants: {name!r} needs {source!r} (it takes that row's ESS)")
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        set_reporter(log_reporter(every_s=60.0))
    started = time.perf_counter()
    recipe, work = load_recipe(args.recipe), Path(args.work)
    stage2 = IterateSpec(rounds=args.rounds, local_size=args.local_size, rank=4)
    lines = [
        "| task | seed | model | accuracy | Δ vs base (95% CI) | Δ vs K=1 (95% CI) | Δ vs CoRP stage 1 (95% CI) | ESS of | shipped step RMS ×10⁻³ | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rounds = ["| task | seed | round | σ | outcome | chosen point | fold B fixes / regressions | ESS of |", "|---|---|---|---|---|---|---|---|"]
    summary, shares = [], ["| task | seed | CoRP stage 1 | CoRP + stage 2 |", "|---|---|---|---|"]
    for task in args.tasks:
        for seed in args.seeds:
            table: dict[str, dict[str, Any]] = {}
            reports: dict[str, dict[str, Any]] = {}
            for name, change in VARIANTS.items():
                if name not in args.variants:
                    continue
                grid = grid_for(name, change, reports) if not args.table_only else GRIDS[change["merge_method"]]
                run = variant(recipe, task, seed, work, name, change, grid, stage2, args.votes)
                if args.table_only:
                    report = read_report(Path(run.output.path))
                    if report is None:
                        continue
                    reports[name] = report
                else:
                    reports[name] = run_recipe(run, overwrite=True)
                    print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {task} seed {seed}: {name} done", flush=True)
                table.update(rows_of(reports[name], name, args.votes))
                table[name].update(shipped_test(Path(run.scoring.store), Path(run.output.path), reports[name], run.evaluate.split))
            if "CoRP + stage 2" in reports:
                rounds += stage2_lines(task, seed, reports["CoRP + stage 2"])
            shares.append(
                f"| {task} | {seed} | "
                + " | ".join(kept_share(table, n, max(args.votes)) if n in table else "—" for n in ("CoRP stage 1", "CoRP + stage 2"))
                + " |"
            )
            for name, row in table.items():
                note = "abstained (= base)" if row.get("abstained") else ""
                lines.append(
                    f"| {task} | {seed} | {name} | {100 * row['accuracy']:.1f}% | {fmt(row)} | {fmt(row, 'vs_k1')} | {vs_stage1(table, name)} | {row.get('weights', '')} "
                    f"| {row.get('step', '')} | {note} |"
                )
                if name != "base":
                    summary.append(
                        {
                            "task": f"{task} (seed {seed})",
                            "method": name,
                            "delta": row.get("diff"),
                            "lo": row.get("ci_low"),
                            "hi": row.get("ci_high"),
                            "abstained": bool(row.get("abstained")),
                        }
                    )
    wall = time.perf_counter() - started
    text = (
        "\n".join(lines)
        + f"\n\nStage 2 as the paper defines it (local population {args.local_size}, every grid point per round):\n\n"
        + "\n".join(rounds)
        + f"\n\nShare of the top-{max(args.votes)} vote's gain that CoRP keeps (an abstention keeps 0):\n\n"
        + "\n".join(shares)
    )
    command = "python bench/fidelity.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    figure = write_summary_png(summary, Path(args.out).with_suffix(".png"))
    Path(args.out).write_text(f"`{command}` — {wall / 60:.0f} min wall\n\n{text}\n\n![summary]({figure.name})\n")
    print(text)
    print(f"wall {wall / 60:.1f} min; table → {args.out}; figure → {figure}")


if __name__ == "__main__":
    main()
