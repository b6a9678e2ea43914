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
    """A finished run's report and, per held-out task, the test vectors of the base, the shipped model (an abstention
    ships the base) and RandOpt K=1 (None when its entry cannot be told apart); None if not run.

    The shipped model's subject is its lineage's update (what the output folder holds), so its per-example
    scores are read from the store the run wrote them to."""
    out, work = Path(recipe["output"]["path"]), Path(recipe["output"]["work_dir"])
    reports = [json.loads(p.read_text()) for p in (out / "report.json", work / "report.json") if p.is_file()]
    reports = [r for r in reports if is_run_of(r, recipe)]  # the shared work folder holds the last abstention of any variant
    if not reports:
        return None
    report = reports[0]
    store = work / "scores.sqlite"
    main = recipe["scoring"]["tasks"][0]
    subject = shipped_subject(out, report["gate"]["accepted"])
    k1_row = report["evaluation"]["rows"].get("best_entry")
    k1 = entry_with_accuracy(store, k1_row["accuracy"], main) if k1_row else None
    vectors: dict[str, dict[str, Any]] = {}
    for task in [main, *other_tasks(recipe)]:
        keys, base = test_vector(store, "base", task)
        shipped = base if subject == "base" else test_vector(store, subject, task)[1]
        if shipped.size != base.size:
            raise SystemExit(f"{store}: the shipped model has {shipped.size} test scores on {task}, the base {base.size}")
        vectors[task] = {"keys": keys, "base": base, "shipped": shipped, "k1": test_vector(store, k1, task)[1] if k1 else None}
    return {"report": report, "store": store, "tasks": vectors, **vectors[main]}


def other_tasks(recipe: dict[str, Any]) -> list[str]:
    """The held-out tasks the support does not train (``evaluate.tasks`` beyond ``scoring.tasks``)."""
    return [t for t in recipe.get("evaluate", {}).get("tasks", []) if t not in recipe["scoring"]["tasks"]]


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


def k1_cell(report: dict[str, Any], base: np.ndarray, k1: np.ndarray | None, clusters: list[str] | None) -> str:
    """RandOpt K=1's Δ vs the base, clustered like the others when its entry's test scores can be told apart in the
    store; else the report's own interval, marked † (per-example in reports written before ``cluster_by``)."""
    row = report["evaluation"]["rows"].get("best_entry")
    if not row:
        return ""
    if k1 is None or k1.size != base.size:
        return fmt(row["diff"], row["ci_low"], row["ci_high"]) + " †"
    return fmt(*clustered_interval(base, k1, clusters))


def power(low: float, high: float, gain: float = 0.04) -> float:
    """Power of a two-sided 95% test for ``gain`` given a measured 95% interval (its half-width / 1.96 is the SE)."""
    se = (high - low) / (2 * 1.96)
    return float(0.5 * (1 + math.erf((gain / se - 1.96) / math.sqrt(2))))


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
    ap.add_argument("--resume", action="store_true", help="run only what has no finished run (and wall time) in --work yet")
    args = ap.parse_args()
    base_recipe = yaml.safe_load(Path(args.recipe).read_text())
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    main_task, others = base_recipe["scoring"]["tasks"][0], other_tasks(base_recipe)
    split = base_recipe["evaluate"]["split"]
    other_head = "".join(f" | {t}: shipped Δ | {t}: K=1 Δ" for t in others)
    lines = [
        f"`python bench/demo_seeds.py {shlex.join(sys.argv[1:])}`",
        "",
        f"Held-out test split of {main_task}; Δ vs the base in points with its 95% interval (clustered by question where the task declares it)."
        + (f" Beside it, {', '.join(others)}: held-out tasks the support does not train." if others else ""),
        "",
        f"| seed | variant | gate (fold B → fold C) | shipped on test (Δ vs base) | vs corp | RandOpt K=1 (Δ vs base){other_head} | example evaluations | wall |",
        "|---|---|---|---|---|---" + "|---|---" * len(others) + "|---|---|",
    ]
    pooled: dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    widths: list[str] = []
    halves: list[str] = []
    keys0: dict[str, list[tuple[str, int]]] = {}
    clusters: dict[str, list[str] | None] = {}
    for pair in args.pairs:
        s, t = (int(x) for x in pair.split("/"))
        corp_vec = None
        for variant in args.variants:
            recipe = variant_recipe(base_recipe, variant, s, t, work, args.es_size)
            wall_file = work / f"{s}-{t}-{variant}.wall"
            got = read_run(recipe) if args.table_only or (args.resume and wall_file.exists()) else None
            if got is not None:
                got["wall"] = float(wall_file.read_text()) if wall_file.exists() else float("nan")
            elif args.table_only:
                continue
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {pair} {variant} …", flush=True)
                got = run_one(recipe, work / f"{s}-{t}-{variant}.yaml")
            if "failed" in got:
                lines.append(f"| {pair} | {variant} | failed: {got['failed']} |" + " |" * (5 + 2 * len(others)) + f" {got['wall']:.0f} s |")
                print(lines[-1], flush=True)
                continue
            rep = got["report"]
            cells = []
            for task, v in got["tasks"].items():
                if task not in keys0:
                    keys0[task], clusters[task] = v["keys"], question_clusters(v["keys"], [task], split)
                if v["keys"] != keys0[task]:
                    raise SystemExit(f"the test examples of {task} differ between runs; the pooled estimate needs the same ones")
                cl = clusters[task]
                pooled.setdefault((task, variant, "shipped"), []).append((v["base"], v["shipped"]))
                if v["k1"] is not None:
                    pooled.setdefault((task, variant, "RandOpt K=1"), []).append((v["base"], v["k1"]))
                shipped_ci = clustered_interval(v["base"], v["shipped"], cl)
                k1_text = k1_cell(rep, v["base"], v["k1"], cl)
                if task == main_task:
                    if cl is not None:
                        widths.append(
                            f"| {pair} | {variant} | {width_ratio(v['base'], v['shipped'], cl):.2f} | {width_ratio(v['base'][:500], v['shipped'][:500], cl[:500]):.2f} |"
                        )
                    vs_corp = fmt(*clustered_interval(corp_vec, v["shipped"], cl)) if corp_vec is not None and variant != "corp" else ""
                    if variant == "corp":
                        corp_vec = v["shipped"]
                    ref = v["k1"] if v["k1"] is not None else v["shipped"]
                    _, low, high = clustered_interval(v["base"], ref, cl)
                    halves.append(f"| {pair} | {variant} | ±{50 * (high - low):.1f} | {100 * power(low, high):.0f}% |")
                    cells = [gate_text(rep), f"{100 * v['shipped'].mean():.1f}% ({fmt(*shipped_ci)})", vs_corp, k1_text, *cells]
                else:
                    cells += [fmt(*shipped_ci), k1_text]
            lines.append(f"| {pair} | {variant} | " + " | ".join(cells) + f" | {rep.get('example_evaluations', 0):,} | {wall_text(got['wall'])} |")
            print(lines[-1], flush=True)
    lines += ["", "Pooled over the pairs run (each test example's mean difference over them; an abstention ships the base, a difference of 0):", ""]
    lines += [
        "| task | variant | model | pairs | n | pooled Δ vs base (paired 95%) | clustered by question | power for +4 points |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, variant, model), pairs in pooled.items():
        d = np.mean([x - b for b, x in pairs], axis=0)
        zero = np.zeros_like(d)
        plain = paired_interval(zero, d)
        cl = clusters[task]
        by_q = clustered_interval(zero, d, cl) if cl else None
        _, low, high = by_q or plain
        lines.append(
            f"| {task} | {variant} | {model} | {len(pairs)} | {d.size} | {fmt(*plain)} | {fmt(*by_q) if by_q else 'n/a'} | {100 * power(low, high):.0f}% |"
        )
    lines += [
        "",
        f"Power of one pair's held-out interval on {main_task} for a +4-point gain, from the measured half-width (RandOpt K=1's, the shipped model's where K=1 is absent):",
        "",
    ]
    lines += ["| seed | variant | measured half-width (points) | power for +4 points |", "|---|---|---|---|", *halves]
    cl = clusters.get(main_task)
    if cl:
        lines.append(f"\nTest questions of {main_task}: {len(set(cl))} distinct among {len(cl)} examples.")
        lines += ["", "Clustered ÷ per-example interval width (its square is the design effect):", ""]
        lines += [f"| seed | variant | all {len(cl)} | first 500 |", "|---|---|---|---|", *widths]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
