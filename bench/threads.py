"""Concurrent small runs with one OpenMP thread each against the default: why `make test` sets OMP_NUM_THREADS=1.

Usage: python bench/threads.py [--processes 2] [--repeats 2]

Builds the test suite's tiny model and task in a temp folder, then runs `--processes` copies of
`corpmerge run` at once (as two pytest-xdist workers do), first with OMP_NUM_THREADS=1, then with
torch's default (one thread per core), side by side, `--repeats` times. Prints the wall time of each
batch and each run's own "score" phase time, and the ratios default / one thread.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import scoring_recipe  # noqa: E402
from tiny import build_tiny_model, write_mc_task  # noqa: E402


def batch(recipes: list[Path], threads: str | None) -> tuple[float, list[float]]:
    """Run the recipes at once; return the batch's wall seconds and each run's score-phase seconds."""
    for recipe in recipes:  # every run scores from scratch: no store, no output
        out = Path(yaml.safe_load(recipe.read_text())["output"]["path"])
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(Path(f"{out}.work"), ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-m", "corpmerge", "run", str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for r in recipes
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"a run failed: exit codes {[p.returncode for p in procs]}")
    scores = [float(m.group(1)) for out in outs if (m := re.search(r"score ([0-9.]+)s", out))]
    return wall, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corpmerge-bench-threads-") as tmp:
        root = Path(tmp)
        model, tasks = build_tiny_model(root / "model"), write_mc_task(root / "tasks")
        recipes = []
        for i in range(args.processes):
            path = root / f"recipe-{i}.yaml"
            path.write_text(yaml.safe_dump(scoring_recipe(model, tasks, root / f"out-{i}"), sort_keys=False))
            recipes.append(path)
        rows: dict[str, list[tuple[float, list[float]]]] = {"1": [], "default": []}
        for _ in range(args.repeats):
            for label in rows:
                rows[label].append(batch(recipes, "1" if label == "1" else None))
    medians = {label: (statistics.median(w for w, _ in res), statistics.median(s for _, ss in res for s in ss)) for label, res in rows.items()}
    print(f"{args.processes} concurrent `corpmerge run` of the tiny test recipe, {os.cpu_count()} cores, {args.repeats} repeats (medians)")
    print("| OMP_NUM_THREADS | batch wall (s) | score phase per run (s) |")
    print("|---|---|---|")
    for label, (wall, score) in medians.items():
        print(f"| {label} | {wall:.1f} | {score:.1f} |")
    (w1, s1), (wd, sd) = medians["1"], medians["default"]
    print(f"ratio default / one thread: batch wall {wd / w1:.2f}, score phase {sd / s1:.2f}")


if __name__ == "__main__":
    main()
