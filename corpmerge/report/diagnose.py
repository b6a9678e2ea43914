"""Split-half diagnostic (paper §3): is there shared structure in the rewarded elites?

On a coordinate sketch (the first ``coords`` noise entries of every perturbed tensor, times σ)
of the elites (the method's elite set E = {i : rᵢ ≥ quantile_q(r)}, its top ``top`` by reward),
weighted by Eq. 7's wᵢ = softmax(β·r)ᵢ over the elites (equal weights when no rewards are
given), the elites are split into random halves ``splits`` times:
* mean-consensus  = cos(μ_A, μ_B), μ_H = Σ_{i∈H} wᵢxᵢ / Σ_{i∈H} wᵢ the halves' weighted means;
* subspace-excess = ‖U_Aᵀ U_B‖²_F / k − k/m, the overlap of the top-k principal subspaces of the
  halves' weighted point clouds (rows √wᵢ·(xᵢ − μ_H)) beyond what two random k-dimensional
  subspaces of R^m share.

The estimate T is the mean of a statistic over the splits. Its 95% lower bound comes from the
null hypothesis "pure noise": the elites' directions carry no shared structure, i.e. the rows
are independent and each is rotation-invariant (as σᵢ·ε(sᵢ) is when rewards are unrelated to the
noise). Under it (x₁, …, xₙ) has the law of (R₁x₁, …, Rₙxₙ) for independent uniform rotations Rᵢ,
so T computed on rows ‖xᵢ‖·uᵢ, uᵢ uniform on the sphere of R^m (norms, weights and splits kept),
is a draw of T's null distribution, and both statistics have null mean exactly 0. With c the
95% quantile of ``draws`` such draws, lower = T − max(c, 0): the one-sided 95% bound of the
shift θ in T = θ + (null noise), so lower ≤ T always, and "stable" (lower > 0 ⇔ T > c) is a
randomization test whose false-"stable" rate on pure noise is 5% at any number of elites.
The old bootstrap over elites failed this: a resample repeats ≈ 37% of the elites, so a half
held fewer distinct points than k + 1 and its "top-k subspace" was partly SVD filler shared by
both halves (pure noise at 12–24 elites was "stable", with a bound above the mean).
Each null draw needs only the coordinates of n Gaussian rows in an orthonormal basis of their
span: by Bartlett's decomposition these are a lower-triangular L with Lᵢⱼ ~ N(0, 1) (j < i) and
Lᵢᵢ ~ χ_{m−i} (0-based i), so a draw costs O(n²), not O(n·m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from corpmerge.methods.weights import softmax
from corpmerge.noise import DEFAULT_SCHEME, gaussian, lowrank
from corpmerge.population import Entry


@dataclass(frozen=True)
class Statistic:
    values: np.ndarray
    mean: float
    lower: float

    @property
    def stable(self) -> bool:
        return self.lower > 0


def sketch(
    entries: list[Entry],
    names: list[str],
    coords: int = 32,
    shapes: dict[str, tuple[int, ...]] | None = None,
    scheme: str = DEFAULT_SCHEME,
    rank: int | None = None,
) -> np.ndarray:
    """Rows σᵢ·ε(sᵢ)[name][:coords] over ``names``, concatenated (float32), with noise ``scheme``; ``rank``: the first
    elements of each matrix's rank-r noise ε_r (``lowrank.fill``; needs ``shapes``)."""
    columns = [min(coords, math.prod((shapes or {}).get(name, (coords,)))) for name in names]

    def first(seed: int, name: str, count: int) -> np.ndarray:
        if rank is None:
            return gaussian(seed, name, (count,), scheme=scheme).numpy()
        return lowrank.fill(torch.empty(count, dtype=torch.float32), seed, name, 0, shapes[name], rank, scheme=scheme).numpy()

    rows = [np.concatenate([e.sigma * first(e.seed, name, c) for name, c in zip(names, columns)]) for e in entries]
    return np.stack(rows).astype(np.float32)


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """μ = Σ wᵢxᵢ / Σ wᵢ."""
    return w @ x / w.sum()


def _top_subspace(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal directions (columns) of the weighted cloud, rows √(wᵢ/Σw)·(xᵢ − μ)."""
    cloud = np.sqrt(w / w.sum())[:, None] * (x - _weighted_mean(x, w))
    _, _, vt = np.linalg.svd(cloud, full_matrices=False)
    return vt[:k].T


def _halves_statistics(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray, k: int, m: int) -> tuple[float, float]:
    """(cos(μ_A, μ_B), ‖U_Aᵀ U_B‖²_F / k − k/m) of two weighted halves in R^m."""
    mu_a, mu_b = _weighted_mean(a, wa), _weighted_mean(b, wb)
    consensus = float(mu_a @ mu_b / (np.linalg.norm(mu_a) * np.linalg.norm(mu_b) + 1e-30))
    overlap = _top_subspace(a, wa, k).T @ _top_subspace(b, wb, k)
    return consensus, float((overlap**2).sum() / k - k / m)


def _row_coordinates(x: np.ndarray) -> np.ndarray:
    """L with x = L·Qᵀ, Q an orthonormal basis of the rows' span: cosines and subspace overlaps
    of any rows are those of their coordinates, at the cost of ≤ n columns instead of m."""
    _, r = np.linalg.qr(x.astype(np.float64).T)
    return r.T


def _split_means(x: np.ndarray, w: np.ndarray, k: int, m: int, halves: np.ndarray) -> np.ndarray:
    """Both statistics for each split (rows of ``halves``: True = first half), shape splits × 2."""
    return np.array([_halves_statistics(x[h], w[h], x[~h], w[~h], k, m) for h in halves])


def _null_rows(norms: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Coordinates (in a basis of their span) of rows ‖xᵢ‖·uᵢ, uᵢ independent and uniform on the sphere of R^m."""
    n = norms.size
    if n > m:
        rows = rng.standard_normal((n, m))
    else:  # Bartlett: the Cholesky factor of a Wishart_n(m, I) matrix
        rows = np.tril(rng.standard_normal((n, n)), -1)
        rows[np.diag_indices(n)] = np.sqrt(rng.chisquare(m - np.arange(n)))
    return rows * (norms / np.linalg.norm(rows, axis=1))[:, None]


def split_half(
    x: np.ndarray,
    k: int = 8,
    splits: int = 20,
    seed: int = 0,
    draws: int = 200,
    rewards: np.ndarray | None = None,
    beta: float = 10.0,
) -> dict[str, Statistic]:
    """Mean-consensus and subspace-excess over random half splits of the rows of ``x`` (the
    elites), weighted by softmax(β·rewards) (equal weights when ``rewards`` is None), with 95%
    lower bounds from ``draws`` rotation-null draws (module docstring)."""
    rng = np.random.default_rng(seed)
    (n, m), coords = x.shape, _row_coordinates(x)
    if n < 4:
        raise ValueError(f"split_half: needs at least 4 elites (got {n})")
    k = max(1, min(k, n // 2 - 1, m))
    if rewards is not None and len(rewards) != n:
        raise ValueError(f"split_half: {len(rewards)} rewards for {n} elites")
    w = np.full(n, 1.0 / n) if rewards is None else softmax(beta * np.asarray(rewards, dtype=np.float64))
    halves = np.zeros((splits, n), dtype=bool)
    for row in halves:
        row[rng.permutation(n)[: n // 2]] = True
    values = _split_means(coords, w, k, m, halves)
    norms = np.linalg.norm(coords, axis=1)
    null = np.array([_split_means(_null_rows(norms, m, rng), w, k, m, halves).mean(axis=0) for _ in range(draws)])
    means = values.mean(axis=0)
    margin = np.maximum(np.quantile(null, 0.95, axis=0), 0.0)
    names = ("mean_consensus", "subspace_excess")
    return {name: Statistic(values[:, i], float(means[i]), float(means[i] - margin[i])) for i, name in enumerate(names)}


def plot(path: str, entries: list[Entry], elite_sketch: np.ndarray, stats: dict[str, Statistic]) -> None:
    """PNG: rewards by σ, the two statistics with their bounds, the elite cloud's singular values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    sigmas = sorted({e.sigma for e in entries})
    axes[0, 0].boxplot([[e.reward for e in entries if e.sigma == s] for s in sigmas], tick_labels=[f"{s:g}" for s in sigmas])
    axes[0, 0].set(title="support reward by σ", xlabel="σ", ylabel="reward (fold A)")
    for ax, (name, stat) in zip((axes[0, 1], axes[1, 0]), stats.items()):
        ax.plot(stat.values, "o", alpha=0.6)
        ax.axhline(stat.mean, color="C1", label=f"mean {stat.mean:+.3g}")
        ax.axhline(stat.lower, color="C3", linestyle="--", label=f"95% lower bound {stat.lower:+.3g}")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=f"{name.replace('_', '-')} ({'stable' if stat.stable else 'not stable'})", xlabel="split")
        ax.legend(fontsize=8)
    singular = np.linalg.svd(elite_sketch - elite_sketch.mean(axis=0), compute_uv=False)
    axes[1, 1].semilogy(np.arange(1, singular.size + 1), singular, "o-")
    axes[1, 1].set(title="elite cloud singular values (centred sketch)", xlabel="index")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
