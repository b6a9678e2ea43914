"""Split-half diagnostic (paper §3): is there shared structure in the rewarded elites?

On a coordinate sketch (the first ``coords`` noise entries of every perturbed tensor, times σ)
of the top-M elites, the elites are split into random halves ``splits`` times:
* mean-consensus  = cos(μ_A, μ_B), the agreement of the two halves' mean perturbations;
* subspace-excess = ‖U_Aᵀ U_B‖²_F / k − k/m, the overlap of the halves' top-k principal
  subspaces (of the centred sketch) beyond what two random k-dimensional subspaces of R^m share.
A statistic is "stable" when the one-sided 95% bootstrap lower bound of its mean is > 0. The
bootstrap resamples elites (the sampling unit), not splits: the splits all share the same
elites, so their spread says nothing about sampling error. Each bootstrap sample is split by
*distinct* elite, so a resampled duplicate never lands in both halves (which would fake consensus).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def _top_subspace(x: np.ndarray, k: int) -> np.ndarray:
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:k].T


def _halves_statistics(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float]:
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    consensus = float(mu_a @ mu_b / (np.linalg.norm(mu_a) * np.linalg.norm(mu_b) + 1e-30))
    overlap = _top_subspace(a, k).T @ _top_subspace(b, k)
    return consensus, float((overlap**2).sum() / k - k / a.shape[1])


def split_half(x: np.ndarray, k: int = 8, splits: int = 20, seed: int = 0, draws: int = 200) -> dict[str, Statistic]:
    """Mean-consensus and subspace-excess over random half splits of the rows of ``x``, with
    elite-bootstrap 95% lower bounds."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    k = max(1, min(k, n // 2 - 1, x.shape[1]))

    def split_stats(rows: np.ndarray, owner: np.ndarray) -> tuple[float, float]:
        ids = rng.permutation(np.unique(owner))
        first = np.isin(owner, ids[: ids.size // 2])
        return _halves_statistics(rows[first], rows[~first], k)

    values = np.array([split_stats(x, np.arange(n)) for _ in range(splits)])
    boot = []
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        if np.unique(pick).size >= 4:
            boot.append(split_stats(x[pick], pick))
    boot = np.array(boot)
    names = ("mean_consensus", "subspace_excess")
    return {
        name: Statistic(values[:, i], float(values[:, i].mean()), float(np.quantile(boot[:, i], 0.05)))
        for i, name in enumerate(names)
    }


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
