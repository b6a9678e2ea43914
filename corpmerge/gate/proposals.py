"""CoRP stage 2: covariance-adaptive local search around the accepted update.

Each round draws P local perturbations around the centre: a fresh seed at scale σ√ρ plus
Σⱼ cⱼuⱼ over the top-r principal directions uⱼ (unit amplitude vectors) of the previous
compatibility-weighted elite cloud, with cⱼ ~ N(0, σ²(1−ρ)·λⱼ/Σλ). The per-coordinate variance
of a proposal is then σ² in total, of which exactly 1−ρ is low-rank. (The reference code scales
cⱼ by √λ in amplitude units, which makes the low-rank part ~1000× too small.)
The round then runs the whole stage-1 procedure on the local population (``stage2.iterate``).
Every proposal is an amplitude vector, so the result stays θ₀ + Σ aₛ·ε(s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpmerge.amplitudes import Amplitudes, Cloud


@dataclass(frozen=True)
class Directions:
    """Top principal directions (rows, unit norm) over ``seeds`` and their eigenvalues."""

    seeds: np.ndarray
    vectors: np.ndarray
    eigenvalues: np.ndarray


def principal_directions(cloud: Cloud, rows: np.ndarray, weights: np.ndarray, rank: int) -> Directions:
    """Eigen-decomposition of the weighted covariance of the elite amplitude vectors.

    Computed on the seeds the elites use, so every direction is exactly zero elsewhere (SVD
    round-off would otherwise put 1e-17 amplitudes on every seed of the population, and each
    non-zero amplitude costs a full noise draw when the model is materialised).
    """
    v = cloud.vectors[rows]
    support = np.flatnonzero(np.any(v != 0, axis=0))
    w = weights / weights.sum()
    centred = (v[:, support] - w @ v[:, support]) * np.sqrt(w)[:, None]
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eig = singular**2
    keep = eig > eig.max() * 1e-12 if eig.size else eig.astype(bool)
    keep[rank:] = False
    vectors = np.zeros((int(keep.sum()), cloud.seeds.size))
    vectors[:, support] = vt[keep]
    return Directions(cloud.seeds, vectors, eig[keep])


def propose(
    directions: Directions, size: int, sigma: float, floor: float, rng: np.random.Generator, used_seeds: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` local perturbations as amplitude rows over (direction seeds + one fresh seed each).

    Returns (seeds, vectors): vectors[k] = σ√ρ·e(fresh_k) + Σⱼ c_kj·uⱼ.
    """
    fresh: list[int] = []
    while len(fresh) < size:
        seed = int(rng.integers(0, 2**31 - 1))
        if seed not in used_seeds:
            used_seeds.add(seed)
            fresh.append(seed)
    base = directions.seeds.size
    vectors = np.zeros((size, base + size))
    vectors[np.arange(size), base + np.arange(size)] = sigma * np.sqrt(floor)
    if directions.eigenvalues.size and floor < 1:
        share = directions.eigenvalues / directions.eigenvalues.sum()
        coefficients = rng.standard_normal((size, share.size)) * sigma * np.sqrt((1 - floor) * share)
        vectors[:, :base] += coefficients @ directions.vectors
    return np.concatenate([directions.seeds, np.array(fresh, dtype=np.int64)]), vectors


def shifted(centre: Amplitudes, seeds: np.ndarray, vectors: np.ndarray) -> list[Amplitudes]:
    """centre + each proposal, as amplitude vectors over the union of seeds."""
    union = np.union1d(centre.seeds, seeds)
    position = {int(s): i for i, s in enumerate(union)}
    base = np.zeros(union.size)
    base[[position[int(s)] for s in centre.seeds]] = centre.values
    columns = [position[int(s)] for s in seeds]
    out = []
    for row in vectors:
        values = base.copy()
        np.add.at(values, columns, row)
        out.append(Amplitudes(union, values))
    return out


def low_rank_share(vectors: np.ndarray, base_columns: int) -> float:
    """Share of the proposals' total per-coordinate variance that lies in the low-rank part."""
    low = (vectors[:, :base_columns] ** 2).sum()
    return float(low / (vectors**2).sum())
