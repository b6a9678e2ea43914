"""Ray workers on uneven units: idle fraction and wall time per process, against a static round-robin deal.

The units go through corpmerge's RayEvaluator on a bounded local Ray cluster: N − 1 actors and
the driver, which evaluates a unit itself while every worker is busy; N = 2 and 3. Cost model: a
unit of n examples sleeps n × --example-ms × its process's slowness, so the deal is measured on
known, uneven costs without the shared cores distorting it; Ray's calls and the SQLite store's
commits are real. Unit sizes are lognormal (a few large units among many small ones, as racing
stages and probes produce). Scenario "worker 1 4× slower" makes worker 1 --slow times as slow (an
older GPU, a busy node). Idle fraction of a process = (wall − busy) ÷ wall of the batch.

The static round-robin baseline (unit i on process i mod N, all wait for the last) is computed
from the same cost model, not measured: busy = the sleeps of its units, idle = wall − busy. It
has no overhead at all, so Ray's ratio to it includes costs the baseline lacks. Also printed:
the per-unit overhead of a Ray actor round trip against an in-process call (1-example units, no sleep).

The comparison with corpmerge's torchrun/accelerate coordinator was measured before the
coordinator was deleted; its figures are in BENCHMARKS.md.

Usage: python bench/distributed.py [--units 40] [--example-ms 10] [--slow 4] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from corpmerge.scoring.evaluator import Request, Unit
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import ExampleScore
from corpmerge.scoring.ray_evaluator import Deadlines, RayEvaluator
from corpmerge.scoring.store import Scores, ScoreStore
from corpmerge.scoring.workers import Cluster


class SleepyScorer:
    """The cost model: sleeps examples × example_s × slowness; returns made-up scores."""

    def __init__(self, example_s: float, slowness: float) -> None:
        self.example_s, self.slowness = example_s, slowness
        self.evaluations = self.examples_evaluated = 0

    def evaluate(self, update: Any, docs: Docs, suite: Any = None) -> Scores:
        n = sum(len(ids) for ids in docs.values())
        time.sleep(n * self.example_s * self.slowness)
        return {(task, d): ExampleScore(1.0, True, None) for task, ids in docs.items() for d in ids}


class SleepyWorker:
    """A Ray actor with the cost model of ``SleepyScorer`` and the interface of ``scoring.workers.ScoringWorker``."""

    def __init__(self, example_s: float, slowness: float) -> None:
        self.scorer = SleepyScorer(example_s, slowness)

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, unit: Unit) -> tuple[Scores, float]:
        start = time.perf_counter()
        scores = self.scorer.evaluate(unit.update, unit.docs)
        return scores, time.perf_counter() - start


@dataclass
class Deal:
    """One batch: wall seconds, and each process's busy seconds and units (process 0 is the driver)."""

    wall: float
    busy: list[float]
    units: list[int]

    def idle(self) -> list[float]:
        """Each process's idle fraction, (wall − busy) ÷ wall."""
        return [max(0.0, self.wall - b) / self.wall for b in self.busy]


def round_robin(sizes: list[int], example_s: float, slowness: list[float]) -> Deal:
    """Unit i on process i mod N, computed from the cost model (no overhead)."""
    n = len(slowness)
    busy = [sum(sizes[r::n]) * example_s * slowness[r] for r in range(n)]
    return Deal(max(busy), busy, [len(sizes[r::n]) for r in range(n)])


def ray_deal(sizes: list[int], example_s: float, slowness: list[float]) -> Deal:
    """The units through RayEvaluator with len(slowness) − 1 actors and the driver, measured."""
    actors = [ray.remote(SleepyWorker).options(num_cpus=0).remote(example_s, s) for s in slowness[1:]]
    ray.get([a.evaluate.remote(Unit(0, "warm-up", "A", {"t": [0]}, None, "support")) for a in actors])  # imports, as a real worker has done
    requests = [Request(f"unit:{i}", "A", {"t": list(range(n))}) for i, n in enumerate(sizes)]
    with tempfile.TemporaryDirectory(prefix="corpmerge-bench-dist-") as work:
        store = ScoreStore(Path(work) / "scores.sqlite", {"bench": "distributed"})
        scorer = SleepyScorer(example_s, slowness[0])
        evaluator = RayEvaluator(scorer, store, lambda key: None, actors, Cluster(started=False), Deadlines(10.0, 600.0))  # type: ignore[arg-type]
        start = time.perf_counter()
        evaluator.run(requests, "bench")
        wall = time.perf_counter() - start
        units, driver_s = evaluator._driver
        deal = Deal(wall, [driver_s] + [w.busy_s for w in evaluator.workers], [int(units)] + [w.units for w in evaluator.workers])
        evaluator.close()
        store.close()
    return deal


def unit_overhead(repeats: int) -> tuple[float, float]:
    """Seconds per 1-example unit: an in-process call and a round trip to a Ray actor (medians of ``repeats``)."""
    unit = Unit(0, "unit:0", "A", {"t": [0]}, None, "support")
    local, remote = SleepyWorker(0.0, 1.0), ray.remote(SleepyWorker).options(num_cpus=0).remote(0.0, 1.0)
    ray.get(remote.pid.remote())
    times: dict[str, list[float]] = {"local": [], "actor": []}
    for _ in range(repeats):
        t = time.perf_counter()
        local.evaluate(unit)
        times["local"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get(remote.evaluate.remote(unit))
        times["actor"].append(time.perf_counter() - t)
    ray.kill(remote)
    return float(np.median(times["local"])), float(np.median(times["actor"]))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b > 0 else "n/a"


def table(results: list[tuple[str, int, Deal, Deal]]) -> None:
    """Round-robin (computed) and Ray (measured) side by side, with the ratio ray/round-robin."""
    print(f"\n{'scenario':<20} {'N':>2}  {'deal':<12} {'wall s':>7}  {'idle fraction per process':<26} {'mean idle':>9}  units per process")
    for scenario, size, static, measured in results:
        for label, deal in (("round-robin", static), ("ray workers", measured)):
            idle = deal.idle()
            print(
                f"{scenario:<20} {size:>2}  {label:<12} {deal.wall:7.2f}  {' '.join(f'{x:.3f}' for x in idle):<26} "
                f"{np.mean(idle):9.3f}  {' '.join(map(str, deal.units))}"
            )
        idle_ratio = ratio(float(np.mean(measured.idle())), float(np.mean(static.idle())))
        print(f"{'':<20} {'':>2}  ratio ray/round-robin: mean idle {idle_ratio}, wall {ratio(measured.wall, static.wall)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--example-ms", type=float, default=10.0)
    parser.add_argument("--slow", type=float, default=4.0, help="how many times slower worker 1 is in the slow scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run (overrides --units, --example-ms): 12 units, 2 ms per example, 50 overhead calls")
    args = parser.parse_args()
    units, example_ms, repeats = (12, 2.0, 50) if args.quick else (args.units, args.example_ms, 200)

    rng = np.random.default_rng(args.seed)
    sizes = np.clip(np.round(rng.lognormal(np.log(8), 0.9, units)), 1, 80).astype(int).tolist()
    print(
        f"{units} units, examples per unit {min(sizes)}–{max(sizes)} (median {int(np.median(sizes))}, total {sum(sizes)}), "
        f"{example_ms:g} ms per example; {os.cpu_count()} CPUs"
    )
    ray.init(address="local", num_cpus=min(4, os.cpu_count() or 1), object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)
    try:
        local, actor = unit_overhead(repeats)
        print(f"per-unit overhead (1-example units, no work): in-process {local * 1e6:.0f} µs, Ray actor round trip {actor * 1e6:.0f} µs")
        results = []
        for scenario, slow in (("uneven units", 1.0), (f"worker 1 {args.slow:g}× slower", args.slow)):
            for size in (2, 3):
                slowness = [1.0] * size
                slowness[1] = slow
                static = round_robin(sizes, example_ms / 1000, slowness)
                results.append((scenario, size, static, ray_deal(sizes, example_ms / 1000, slowness)))
    finally:
        ray.shutdown()
    print("\ncost model: sleep (examples × ms × slowness); round-robin computed from it, Ray measured (its calls and SQLite commits real)")
    table(results)


if __name__ == "__main__":
    main()
