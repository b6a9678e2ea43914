"""Split-half diagnostic (paper §3): is there shared structure in the rewarded elites?

On a coordinate sketch (the first ``coords`` noise entries of every perturbed tensor, times σ)
of the top-M elites, weighted by Eq. 7's wᵢ = softmax(β·r)ᵢ over the elites (CoRP's w¹; equal
weights when no rewards are given), the elites are split into random halves ``splits`` times:
* mean-consensus  = cos(μ_A, μ_B), μ_H = Σ_{i∈H} wᵢxᵢ / Σ_{i∈H} wᵢ the halves' weighted means;
* subspace-excess = ‖U_Aᵀ U_B‖²_F / k − k/m, the overlap of the top-k principal subspaces of the
  halves' weighted point clouds (rows √wᵢ·(xᵢ − μ_H)) beyond what two random k-dimensional
  subspaces of R^m share.
A statistic is "stable" when the one-sided 95% bootstrap lower bound of its mean over the splits
is > 0. The bootstrap resamples elites (the sampling unit), not splits: the splits all share
the same elites, so their spread says nothing about sampling error. Each bootstrap replicate is
the mean over ``splits`` splits of the resampled elites, each split by *distinct* elite, so a
resampled duplicate never lands in both halves (which would fake consensus).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpmerge.methods.weights import softmax
from corpmerge.noise import gaussian
from corpmerge.population import Entry


@dataclass(frozen=True)
class Statistic:
    values: np.ndarray
    mean: float
    lower: float

    @property
    def stable(self) -> bool:
        return self.lower > 0


def sketch(entries: list[Entry], names: list[str], coords: int = 32, sizes: dict[str, int] | None = None) -> np.ndarray:
    """Rows σᵢ·ε(sᵢ)[name][:coords] over ``names``, concatenated (float32)."""
    columns = [min(coords, (sizes or {}).get(name, coords)) for name in names]
    rows = [np.concatenate([e.sigma * gaussian(e.seed, name, (c,)).numpy() for name, c in zip(names, columns)]) for e in entries]
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


def _split_means(x: np.ndarray, w: np.ndarray, owner: np.ndarray, k: int, m: int, splits: int, rng: np.random.Generator) -> np.ndarray:
    """Both statistics for ``splits`` random halves of the distinct ``owner`` ids (splits × 2)."""
    ids = np.unique(owner)

    def one_split() -> tuple[float, float]:
        first = np.isin(owner, rng.permutation(ids)[: ids.size // 2])
        return _halves_statistics(x[first], w[first], x[~first], w[~first], k, m)

    return np.array([one_split() for _ in range(splits)])


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
    lower bounds from a bootstrap over elites of the mean over the splits."""
    rng = np.random.default_rng(seed)
    (n, m), coords = x.shape, _row_coordinates(x)
    k = max(1, min(k, n // 2 - 1, m))
    if rewards is not None and len(rewards) != n:
        raise ValueError(f"split_half: {len(rewards)} rewards for {n} elites")
    w = np.full(n, 1.0 / n) if rewards is None else softmax(beta * np.asarray(rewards, dtype=np.float64))
    values = _split_means(coords, w, np.arange(n), k, m, splits, rng)
    boot = []
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        if np.unique(pick).size >= 4:
            boot.append(_split_means(coords[pick], w[pick], pick, k, m, splits, rng).mean(axis=0))
    boot = np.array(boot)
    names = ("mean_consensus", "subspace_excess")
    return {name: Statistic(values[:, i], float(values[:, i].mean()), float(np.quantile(boot[:, i], 0.05))) for i, name in enumerate(names)}


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
