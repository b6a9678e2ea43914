"""How many local perturbations a stage-2 step really averages: a numpy replay (no model, seconds).

Usage: python bench/stage2_ess.py [--sizes 10 20 31 40 100] [--replays 200]

Rewards follow a flip model fitted to the demo's measurements (BENCHMARKS.md): on n = 204 fold-A
examples with the base right on 37%, a perturbation at σ changes each answer with probability
0.113·(σ/5e-3)^0.8 (11.5 of 102 answers at σ = 5e-3 were measured); a changed right answer becomes
wrong, a changed wrong one becomes right with probability 1/3 (4-way multiple choice). The stage-1
population is the demo's (40 entries, σ ∈ {3, 5, 7}·10⁻³); its CoRP result at (q 0.7, β 20, α 1)
gives the principal directions, and each stage-2 local population is drawn with the shipped
``propose`` at σ = 5·10⁻³ (ρ = 0.5, rank 4), rewarded by the same flip model. For the stage-1
population and each local size P, and each grid point, it prints the elites |E| (median), and the
median ESS = 1/Σw² of CoRP's weights and of the same weights without the compatibility terms
(γ = λ = 0, i.e. reward_avg), with 10–90% ranges.
"""

from __future__ import annotations

import argparse

import numpy as np

from corpmerge.amplitudes import Cloud
from corpmerge.gate.proposals import principal_directions, propose
from corpmerge.methods import get_method
from corpmerge.methods.weights import effective_size, elite_indices, softmax

N_A, BASE = 204, 0.37


def flip_rewards(sigmas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fold-A rewards of perturbations at scales ``sigmas`` under the flip model (see the module docstring)."""
    rate = 0.113 * (sigmas / 5e-3) ** 0.8
    right = rng.random(N_A) < BASE
    changed = rng.random((sigmas.size, N_A)) < rate[:, None]
    fixed = rng.random((sigmas.size, N_A)) < 1 / 3
    after = np.where(changed, np.where(right, False, fixed), right)
    return after.mean(axis=1)


def replay(sizes: list[int], replays: int, quantiles: list[float], betas: list[float]) -> dict[tuple[str, float, float], dict[str, list[float]]]:
    corp = get_method("corp")
    out: dict = {}
    for k in range(replays):
        rng = np.random.default_rng(k)
        sigmas = rng.choice([3e-3, 5e-3, 7e-3], 40)
        cloud = Cloud(np.arange(40), np.diag(sigmas), flip_rewards(sigmas, rng))
        stage1 = corp(cloud, corp.point({"quantile": 0.7, "beta": 20.0, "alpha": 1.0}))
        directions = principal_directions(cloud, stage1.elites, stage1.weights, 4)
        locals_ = {"stage 1 (40 single-seed entries)": cloud}
        for size in sizes:
            seeds, vectors = propose(directions, size, 5e-3, 0.5, rng, set(range(40)))
            locals_[f"stage 2, P = {size}"] = Cloud(seeds, vectors, flip_rewards(np.full(size, 5e-3), rng))
        for size, local in locals_.items():
            for q in quantiles:
                elites = elite_indices(local.rewards, q).size
                for beta in betas:
                    result = corp(local, corp.point({"quantile": q, "beta": beta, "alpha": 1.0}))
                    plain = effective_size(softmax(beta * local.rewards[elite_indices(local.rewards, q)]))
                    cell = out.setdefault((size, q, beta), {"elites": [], "corp": [], "plain": []})
                    cell["elites"].append(elites)
                    cell["corp"].append(result.ess)
                    cell["plain"].append(plain)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 31, 40, 100])
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 1, 2, 5, 10, 20, 50])
    args = parser.parse_args()
    cells = replay(args.sizes, args.replays, args.quantiles, args.betas)

    def fmt(values: list[float]) -> str:
        lo, mid, hi = np.percentile(values, [10, 50, 90])
        return f"{mid:.1f} ({lo:.1f}–{hi:.1f})"

    print("| population | q | β | elites | ESS CoRP | ESS γ = λ = 0 |")
    print("|---|---|---|---|---|---|")
    for (size, q, beta), cell in cells.items():
        print(f"| {size} | {q:g} | {beta:g} | {np.median(cell['elites']):.0f} | {fmt(cell['corp'])} | {fmt(cell['plain'])} |")


if __name__ == "__main__":
    main()
