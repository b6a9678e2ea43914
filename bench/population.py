"""Peak RAM and wall time of `corpmerge merge` on big given-reward populations (issue #25: populations in O(N)).

Writes the tiny test model and one recipe per case into --workdir, then runs each as one
`corpmerge -q merge` process and prints wall time and peak RSS (what `/usr/bin/time -v` reports as
maximum resident set size). The 5-entry case is the model and the runtime alone; the goal is
≤ 2 GB above it at 100,000 entries.

Usage: python bench/population.py [--entries 100000] [--workdir DIR] [--write-only]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
CASES = [  # name, method, parameters, entries (None: all)
    ("r5", "corp", "{quantile: 0.7, beta: 10, alpha: 1}", 5),
    ("r100k", "corp", "{quantile: 0.7, beta: 10, alpha: 1}", None),
    ("r100k-topk", "topk_subspace", "{quantile: 0.7, beta: 10, k: 8}", None),
    ("r100k-ties", "ties", "{quantile: 0.98, density: 0.2}", None),
]


def write_cases(folder: Path, entries: int) -> list[Path]:
    base = folder / "tiny"
    if not (base / "config.json").is_file():
        subprocess.run(
            [sys.executable, "-c", f"from tiny import build_tiny_model; build_tiny_model(__import__('pathlib').Path({str(base)!r}))"],
            check=True,
            cwd=TESTS,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
        )
    rng = np.random.default_rng(0)
    rows = [
        f"- {{seed: {i}, sigma: {s}, reward: {r}}}\n" for i, (s, r) in enumerate(zip(rng.choice([0.01, 0.02], entries), rng.permutation(entries) / entries))
    ]
    paths = []
    for name, method, params, n in CASES:
        path = folder / f"{name}.yaml"
        head = (
            f"base_model: {base}\nmerge_method: {method}\nparameters: {params}\ngate: {{enabled: false}}\n"
            f"output: {{path: {folder / ('out-' + name)}}}\npopulation:\n"
        )
        path.write_text(head + "".join(rows[:n] if n else rows))
        paths.append(path)
    return paths


def measure(recipe: Path) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MiB, exit code, last stdout/stderr line) of one `corpmerge -q merge`."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: a child that writes more than a pipe holds cannot block wait4
        proc = subprocess.Popen([sys.executable, "-m", "corpmerge", "-q", "merge", str(recipe), "--overwrite"], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--write-only", action="store_true", help="write the model and recipes, measure nothing")
    args = parser.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="corpmerge-population-"))
    folder.mkdir(parents=True, exist_ok=True)
    recipes = write_cases(folder, args.entries)
    print(f"recipes in {folder}")
    if args.write_only:
        return
    print("| recipe | wall s | peak RSS MiB | exit | last line |\n|---|---|---|---|---|")
    for recipe in recipes:
        wall, rss, code, last = measure(recipe)
        print(f"| {recipe.stem} | {wall:.1f} | {rss:.0f} | {code} | {last[:120]} |", flush=True)


if __name__ == "__main__":
    main()
