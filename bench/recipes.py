"""Wall time and peak RAM of `corpmerge validate` on big and hostile recipes (issue #14's bounds).

Cases: a 100,000-entry population (~5 MB, must validate in ≤ 5 s), the same listed in block style,
a 1,000,000-entry sampled population, a 50 MB recipe (refused by size), a YAML alias bomb and a
64+-level nesting (refused by the YAML bounds), a 2,000,000-item list (refused by the item cap).
Each is one `corpmerge -q validate` process (time and peak RSS include Python and torch start-up;
the first line of the table is a one-entry recipe to show that part alone).

Usage: python bench/recipes.py [--workdir DIR]   (needs only the tiny model it builds; ~1 min of CPU)
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def measure(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MiB, exit code, last stderr line) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    lines = proc.stderr.read().decode().strip().splitlines()
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), lines[-1] if lines else ""


def head(base: Path, out: Path) -> str:
    return f"base_model: {base}\ngate: {{enabled: false}}\noutput: {{path: {out}}}\n"


def write_cases(folder: Path, base: Path) -> dict[str, Path]:
    rng = random.Random(0)
    out = folder / "out"
    cases: dict[str, str | bytes] = {}
    cases["tiny recipe (start-up cost)"] = head(base, out) + "population: [{seed: 1, sigma: 0.01, reward: 0.5}]\n"
    flow = "".join(f"  - {{seed: {i}, sigma: 0.001, reward: {rng.random():.6f}}}\n" for i in range(100_000))
    cases["100,000 entries, flow style"] = head(base, out) + "population:\n" + flow
    block = "".join(f"  - seed: {i}\n    sigma: 0.001\n    reward: {rng.random():.6f}\n" for i in range(100_000))
    cases["100,000 entries, block style"] = head(base, out) + "population:\n" + block
    cases["1,000,000 sampled (with scoring)"] = (
        head(base, out) + "population: {size: 1000000, sigmas: [0.001]}\nscoring: {tasks: [corpmerge_arith]}\n"
    ).replace("gate: {enabled: false}\n", "")
    big = "".join(f"  - {{seed: {i}, sigma: 0.001, reward: 0.5}}\n" for i in range(1_200_000))
    cases["50 MB recipe"] = head(base, out) + "population:\n" + big
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    cases["alias bomb (10^12 values)"] = "\n".join(bomb) + "\n" + head(base, out) + "population: *a11\n"
    cases["nesting 100,000 deep"] = head(base, out) + "parameters: {a: " + "[" * 100_000 + "]" * 100_000 + "}\n"
    cases["2,000,000-item list"] = head(base, out) + "population: [{seed: 1, sigma: 0.1}]\nperturb: {include: [" + "x, " * 2_000_000 + "]}\n"
    paths = {}
    for i, (name, text) in enumerate(cases.items()):
        paths[name] = folder / f"case{i}.yaml"
        paths[name].write_text(text)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="corpmerge-bench-recipes-"))
    base = folder / "base"
    if not (base / "config.json").is_file():  # in a child: this process stays small, or children's peak RSS would include it
        subprocess.run(
            [sys.executable, "-c", f"from tiny import build_tiny_model; build_tiny_model(__import__('pathlib').Path({str(base)!r}))"],
            cwd=TESTS,
            check=True,
            capture_output=True,
        )
    print(f"{'case':<36} {'size':>9} {'exit':>4} {'wall s':>7} {'peak MiB':>9}  last stderr line")
    for name, path in write_cases(folder, base).items():
        wall, rss, code, line = measure([sys.executable, "-m", "corpmerge", "-q", "validate", str(path)])
        size = path.stat().st_size / 1e6
        print(f"{name:<36} {size:>7.1f}MB {code:>4} {wall:>7.2f} {rss:>9.0f}  {line[:110]}")


if __name__ == "__main__":
    main()
