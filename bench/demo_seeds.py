"""The demo on new seed pairs: CoRP as shipped, CoRP on a mirrored population, ES on a mirrored population.

Usage: python bench/demo_seeds.py --pairs 12/34 56/78 90/21 [--recipe recipes/demo.yaml] [--work ./demo-seeds.work]
                                  [--out demo-seeds.md] [--variants corp corp_mirrored es_mirrored]

For each population / split seed pair S/T the demo recipe runs once per variant (`corpmerge run`, one process
each, one after the other), everything else as shipped:

- ``corp``: the recipe as it is;
- ``corp_mirrored``: the same with ``population.antithetic: true`` (size/2 mirrored pairs, raced together);
- ``es_mirrored``: ``merge_method: es`` on a mirrored population whose size makes its fold-A evaluations
  (es uses every entry, so racing stops none) about those of the raced CoRP population (--es-size, default 32:
  32 × 204 = 6,528 against 6,222–6,885 measured for the shipped recipe), with a grid of the same size as
  CoRP's (6 candidates): shaping {zscore, rank} × α {3, 6, 12}. With z-scores over n = 32 entries the step's
  RMS is ≈ α/8 of σ's (pairs whose rewards correlate at 0.5), CoRP's ≈ α/3 at ESS ≈ 9, so α 3–12 spans CoRP's
  α 1–4; centred ranks (sd ≈ 0.29) take 0.29× that step.

The variants of a pair share one work folder (the base's scores on folds B, C and test are computed once).
Each run's shipped model (its lineage's update) is read back from the score store on the test split, so every paired interval is
on the same examples: vs the base, vs ``corp`` of the same pair, and pooled over the pairs (the mean over pairs
of each example's difference; an abstention ships the base, a difference of 0). Where the task declares
``metadata.cluster_by`` (``corpmerge_arith``: its 1,600 test examples ask 247 distinct questions, with other
choices), the intervals in the table are clustered by it, as corpmerge's report gives them, and the pooled row
gives both. Prints a markdown table and writes it, with the command, to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from held_out import entry_with_accuracy, question_clusters, shipped_subject, test_vector

from corpmerge.gate.paired import clustered_interval, paired_interval

VARIANTS = ("corp", "corp_mirrored", "es_mirrored")
ES_GRID = {"shaping": ["zscore", "rank"], "alpha": [3, 6, 12]}


def variant_recipe(base: dict[str, Any], variant: str, pop_seed: int, split_seed: int, work: Path, es_size: int) -> dict[str, Any]:
    """The demo recipe for one seed pair and variant (output and work folders under ``work``)."""
    r = json.loads(json.dumps(base))
    r["population"]["seed"] = pop_seed
    r["scoring"]["support"]["split_seed"] = split_seed
    r["output"]["path"] = str(work / f"out-{pop_seed}-{split_seed}-{variant}")
    r["output"]["work_dir"] = str(work / f"work-{pop_seed}-{split_seed}")
    if variant != "corp":
        r["population"]["antithetic"] = True
    if variant == "es_mirrored":
        r["population"]["size"] = es_size
        r["merge_method"] = "es"
        r["parameters"] = ES_GRID
    return r


def read_run(recipe: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run's report and its shipped model's test vector (an abstention ships the base); None if not run.

    The shipped model's subject is its lineage's update (what the output folder holds), so its per-example
    scores are read from the store the run wrote them to."""
    out, work = Path(recipe["output"]["path"]), Path(recipe["output"]["work_dir"])
    reports = [json.loads(p.read_text()) for p in (out / "report.json", work / "report.json") if p.is_file()]
    reports = [r for r in reports if is_run_of(r, recipe)]  # the shared work folder holds the last abstention of any variant
    if not reports:
        return None
    report = reports[0]
    store = work / "scores.sqlite"
    keys, base = test_vector(store, "base")
    subject = shipped_subject(out, report["gate"]["accepted"])
    shipped = base if subject == "base" else test_vector(store, subject)[1]
    if shipped.size != base.size:
        raise SystemExit(f"{store}: the shipped model has {shipped.size} test scores, the base {base.size}")
    return {"report": report, "keys": keys, "base": base, "shipped": shipped, "store": store}


def is_run_of(report: dict[str, Any], recipe: dict[str, Any]) -> bool:
    """Whether ``report`` is a run of ``recipe``'s variant: its method, population size and mirrored σ (< 0) agree."""
    population = report["population"]
    mirrored = min(float(s) for s in population["sigmas"]) < 0
    return (
        report["method"] == recipe["merge_method"]
        and population["size"] == recipe["population"]["size"]
        and mirrored == bool(recipe["population"].get("antithetic"))
    )


def run_one(recipe: dict[str, Any], path: Path) -> dict[str, Any]:
    """Run ``corpmerge run`` on ``recipe`` (its log next to it); return :func:`read_run` and the wall time."""
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "corpmerge", "run", str(path), "--overwrite"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    path.with_suffix(".log").write_text(done.stdout + done.stderr)
    path.with_suffix(".wall").write_text(f"{wall:.1f}\n")
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        return {"failed": f"exit {done.returncode}: {last}", "wall": wall}
    got = read_run(recipe)
    return {**got, "wall": wall} if got else {"failed": "exit 0 but no report.json", "wall": wall}


def wall_text(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds:.0f} s"


def fmt(diff: float, low: float, high: float) -> str:
    return f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def width_ratio(base: np.ndarray, shipped: np.ndarray, clusters: list[str]) -> float:
    """How much wider the clustered interval is than the per-example one on the same examples."""
    _, low, high = clustered_interval(base, shipped, clusters)
    _, plain_low, plain_high = paired_interval(base, shipped)
    return (high - low) / (plain_high - plain_low)


def k1_cell(report: dict[str, Any], store: Path, base: np.ndarray, clusters: list[str] | None) -> str:
    """RandOpt K=1's Δ vs the base, clustered like the others when its entry's test scores can be told apart in the
    store; else the report's own interval, marked † (per-example in reports written before ``cluster_by``)."""
    row = report["evaluation"]["rows"].get("best_entry")
    if not row:
        return ""
    vector = entry_with_accuracy(store, row["accuracy"])
    if vector is None or vector.size != base.size:
        return fmt(row["diff"], row["ci_low"], row["ci_high"]) + " †"
    return fmt(*clustered_interval(base, vector, clusters))


def gate_text(report: dict[str, Any]) -> str:
    """The gate's choice: grid point and step, fold-B fixes / regressions and LCB, fold-C LCB; or the abstention."""
    g = report["gate"]
    if not g["accepted"]:
        return f"abstained: {g['reason'][:80]}"
    names = {"beta": "β", "alpha": "α", "shaping": "", "quantile": "q"}
    point = ", ".join(f"{names[k]} {v:g}".strip() if isinstance(v, float) else str(v) for k, v in (g.get("params") or {}).items() if k in names and v)
    return f"{point}, ×{g['multiplier']:g}: {g['fixes']} / {g['regressions']}, LCB {g['lcb']:+.3f}; C LCB {g['probe_lcb']:+.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", required=True, help="population/split seed pairs, e.g. 12/34")
    ap.add_argument("--recipe", default="recipes/demo.yaml")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--es-size", type=int, default=32)
    ap.add_argument("--work", default="demo-seeds.work")
    ap.add_argument("--out", default="demo-seeds.md")
    ap.add_argument("--table-only", action="store_true", help="build the tables from the finished runs in --work; run nothing")
    args = ap.parse_args()
    base_recipe = yaml.safe_load(Path(args.recipe).read_text())
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        f"`python bench/demo_seeds.py {shlex.join(sys.argv[1:])}`",
        "",
        "| seed | variant | gate (fold B → fold C) | shipped on test (Δ vs base) | vs corp | RandOpt K=1 (Δ vs base) | example evaluations | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    diffs: dict[str, list[np.ndarray]] = {v: [] for v in args.variants}
    widths: list[str] = []
    keys0: list[tuple[str, int]] | None = None
    clusters: list[str] | None = None
    for pair in args.pairs:
        s, t = (int(x) for x in pair.split("/"))
        corp_vec = None
        for variant in args.variants:
            recipe = variant_recipe(base_recipe, variant, s, t, work, args.es_size)
            if args.table_only:
                got = read_run(recipe)
                if got is None:
                    continue
                wall_file = work / f"{s}-{t}-{variant}.wall"
                got["wall"] = float(wall_file.read_text()) if wall_file.exists() else float("nan")
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {pair} {variant} …", flush=True)
                got = run_one(recipe, work / f"{s}-{t}-{variant}.yaml")
            if "failed" in got:
                lines.append(f"| {pair} | {variant} | failed: {got['failed']} | | | | | {got['wall']:.0f} s |")
                print(lines[-1], flush=True)
                continue
            rep, base, shipped = got["report"], got["base"], got["shipped"]
            if keys0 is None:
                keys0, clusters = got["keys"], question_clusters(got["keys"], base_recipe["scoring"]["tasks"], base_recipe["evaluate"]["split"])
            if got["keys"] != keys0:
                raise SystemExit("the test examples differ between runs; the pooled estimate needs the same ones")
            d = shipped - base
            diffs[variant].append(d)
            if clusters is not None:
                widths.append(
                    f"| {pair} | {variant} | {width_ratio(base, shipped, clusters):.2f} | {width_ratio(base[:500], shipped[:500], clusters[:500]):.2f} |"
                )
            vs_corp = fmt(*clustered_interval(corp_vec, shipped, clusters)) if corp_vec is not None and variant != "corp" else ""
            if variant == "corp":
                corp_vec = shipped
            k1_text = k1_cell(rep, got["store"], base, clusters)
            acc = shipped.mean()
            lines.append(
                f"| {pair} | {variant} | {gate_text(rep)} | {100 * acc:.1f}% ({fmt(*clustered_interval(base, shipped, clusters))}) | {vs_corp} | {k1_text} "
                f"| {rep.get('example_evaluations', 0):,} | {wall_text(got['wall'])} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"Pooled over the pairs run (each test example's mean difference over them; n = {len(keys0 or [])}):", ""]
    lines += ["| variant | pairs | pooled Δ vs base (paired 95%) | clustered by question |", "|---|---|---|---|"]
    for variant, ds in diffs.items():
        if not ds:
            continue
        pooled = np.mean(ds, axis=0)
        zero = np.zeros_like(pooled)
        plain = fmt(*paired_interval(zero, pooled))
        by_q = fmt(*clustered_interval(zero, pooled, clusters)) if clusters else "n/a"
        lines.append(f"| {variant} | {len(ds)} | {plain} | {by_q} |")
    if keys0 and clusters:
        lines.append(f"\nTest questions: {len(set(clusters))} distinct among {len(clusters)} examples.")
        lines += ["", "Clustered ÷ per-example interval width (its square is the design effect):", ""]
        lines += [f"| seed | variant | all {len(clusters)} | first 500 |", "|---|---|---|---|", *widths]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
