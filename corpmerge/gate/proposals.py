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


DENSE_ROWS = 1024  # single-seed clouds with more elites than this are decomposed without a dense matrix


def principal_directions(cloud: Cloud, rows: np.ndarray, weights: np.ndarray, rank: int) -> Directions:
    """Eigen-decomposition of the weighted covariance of the elite amplitude vectors.

    Computed on the seeds the elites use, so every direction is exactly zero elsewhere (SVD
    round-off would otherwise put 1e-17 amplitudes on every seed of the population, and each
    non-zero amplitude costs a full noise draw when the model is materialised). A single-seed
    cloud of more than ``DENSE_ROWS`` elites takes the closed form of its covariance instead
    (``_single_seed_eigen``), in O(elites · rank) memory.
    """
    w = weights / weights.sum()
    if cloud.sigmas is not None and len(rows) > DENSE_ROWS:
        support = np.asarray(rows)
        sigmas = cloud.sigmas[support]
        eig, top = _single_seed_eigen(w * sigmas**2, w * sigmas, rank)
    else:
        support, v = cloud.block(rows)
        centred = (v - w @ v) * np.sqrt(w)[:, None]
        _, singular, top = np.linalg.svd(centred, full_matrices=False)
        eig = singular**2
    keep = eig > eig.max() * 1e-12 if eig.size else eig.astype(bool)
    keep[rank:] = False
    vectors = np.zeros((int(keep.sum()), cloud.seeds.size))
    vectors[:, support] = top[keep]
    return Directions(cloud.seeds, vectors, eig[keep])


def _single_seed_eigen(a: np.ndarray, mu: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``rank`` eigenpairs (eigenvalues descending, unit eigenvectors as rows) of M = diag(a) − μμᵀ.

    The weighted covariance of single-seed rows vᵢ = σᵢeᵢ with weights w (Σw = 1) is
    Σ wᵢ(vᵢ − μ)(vᵢ − μ)ᵀ = diag(wσ²) − μμᵀ, μ = wσ. Rows with equal aᵢ form a group G: inside
    it, every vector orthogonal to μ_G is an eigenvector with eigenvalue a_G (taken from a
    Householder reflection of μ_G); the rest is the secular equation Σ_G ‖μ_G‖²/(a_G − λ) = 1,
    whose k-th largest root lies between the k-th and (k+1)-th largest a_G (found by bisection,
    measured from the nearer pole) with eigenvector xᵢ ∝ μᵢ/(aᵢ − λ). A final QR keeps the
    directions orthonormal to rounding.
    """
    order = np.argsort(-a, kind="stable")
    a_sorted, mu_sorted = a[order], mu[order]
    starts = np.flatnonzero(np.r_[True, a_sorted[1:] != a_sorted[:-1]])
    ends = np.r_[starts[1:], a.size]
    values, weight = a_sorted[starts], np.add.reduceat(mu_sorted**2, starts)
    candidates: list[tuple[float, np.ndarray]] = []
    deflated = 0
    for g in range(values.size):  # groups in descending a: their in-group eigenvectors
        if deflated >= rank:
            break
        members = order[starts[g] : ends[g]]
        for vector in _orthogonal_in_group(mu[members], rank - deflated):
            full = np.zeros(a.size)
            full[members] = vector
            candidates.append((float(values[g]), full))
            deflated += 1
    coupled = np.flatnonzero(weight > 0)
    index = np.full(values.size, -1)
    index[coupled] = np.arange(coupled.size)
    pole_of = index[np.repeat(np.arange(values.size), ends - starts)]  # each sorted row's pole (−1: uncoupled)
    for lam, gaps in _secular_roots(values[coupled], weight[coupled], min(rank, coupled.size)):
        vector = np.zeros(a.size)
        vector[order] = np.where(pole_of >= 0, mu_sorted / gaps[pole_of], 0.0)  # μᵢ/(aᵢ − λ)
        candidates.append((lam, vector / np.linalg.norm(vector)))
    candidates.sort(key=lambda c: -c[0])
    chosen = candidates[:rank]
    if not chosen:
        return np.zeros(0), np.zeros((0, a.size))
    q, _ = np.linalg.qr(np.stack([v for _, v in chosen], axis=1))
    return np.array([lam for lam, _ in chosen]), q.T


def _orthogonal_in_group(mu: np.ndarray, count: int) -> list[np.ndarray]:
    """Up to ``count`` orthonormal vectors orthogonal to ``mu`` (all basis vectors when mu = 0)."""

    def basis(j: int) -> np.ndarray:
        e = np.zeros(mu.size)
        e[j] = 1.0
        return e

    norm = np.linalg.norm(mu)
    if norm == 0:
        return [basis(j) for j in range(min(count, mu.size))]
    v = mu / norm
    v[0] += 1.0 if v[0] >= 0 else -1.0  # H = I − 2vvᵀ/vᵀv maps μ̂ to ∓e₁; its other columns are ⊥ μ
    scale = 2.0 / (v @ v)
    return [basis(j) - scale * v[j] * v for j in range(1, min(count + 1, mu.size))]


def _secular_roots(poles: np.ndarray, z2: np.ndarray, count: int) -> list[tuple[float, np.ndarray]]:
    """The ``count`` largest roots λ of Σⱼ z2ⱼ/(polesⱼ − λ) = 1 (poles descending, z2 > 0), each with polesⱼ − λ.

    Root k lies in (poles[k+1], poles[k]) (the last one below the smallest pole, by at most Σz2);
    it is bisected as an offset from whichever end it is nearer, so polesⱼ − λ keeps its relative precision.
    """

    def secular(origin: float, offset: float) -> float:
        return float(np.sum(z2 / ((poles - origin) - offset))) - 1.0  # increasing in λ = origin + offset

    out = []
    for k in range(count):
        hi = poles[k]
        lo = poles[k + 1] if k + 1 < poles.size else poles[k] - z2.sum()
        upper = secular(hi, -(hi - lo) / 2) < 0  # the root is above the midpoint: measure it from hi
        origin, inner, outer = (hi, 0.0, -(hi - lo) / 2) if upper else (lo, 0.0, (hi - lo) / 2)
        for _ in range(200):  # the secular function is +∞ (upper) or −∞ (lower) at the inner end
            mid = (inner + outer) / 2
            if mid in (inner, outer):
                break
            if (secular(origin, mid) > 0) == upper:
                inner = mid
            else:
                outer = mid
        offset = (inner + outer) / 2
        out.append((float(origin + offset), (poles - origin) - offset))
    return out


def propose(directions: Directions, size: int, sigma: float, floor: float, rng: np.random.Generator, used_seeds: set[int]) -> tuple[np.ndarray, np.ndarray]:
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
