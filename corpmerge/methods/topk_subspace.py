"""Reward-weighted mean projected onto the top-k principal subspace of the reward-weighted elite cloud.

The cloud's rows are √wᵢ·vᵢ (the paper's weighted point cloud), so the subspace depends on the
rewards: on single-seed entries (a diagonal elite matrix) it is spanned by the k elites with the
largest √wᵢ·σᵢ, not merely the largest σᵢ, and is found without forming the matrix.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.methods.registry import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_QUANTILE, MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import elite_indices, softmax


class TopkSubspaceParams(MethodParams):
    quantile: float = Field(default=DEFAULT_QUANTILE, ge=0, lt=1)
    beta: float = Field(default=DEFAULT_BETA, ge=0)
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0)
    k: int = Field(default=8, ge=1)


def principal_directions(vectors: np.ndarray, k: int) -> np.ndarray:
    """Top-k right singular vectors (rows) of the uncentred matrix, dropping null directions."""
    _, singular, vt = np.linalg.svd(vectors, full_matrices=False)
    rank = int((singular > singular.max() * 1e-12).sum()) if singular.size else 0
    return vt[: min(k, rank)]


def weighted_basis(cloud: Cloud, rows: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal directions (rows over ``cloud.seeds``) of the weighted elite cloud [√wᵢ·vᵢ].

    Single-seed rows √wᵢσᵢ·e_i are orthogonal, so the singular vectors are the basis vectors of
    the k largest √wᵢσᵢ (ties: the first rows): no matrix is formed, O(|rows|) memory.
    """
    if cloud.sigmas is None:
        return principal_directions(np.sqrt(weights)[:, None] * cloud.vectors[rows], k)
    scales = np.sqrt(weights) * cloud.sigmas[rows]
    order = np.argsort(-scales, kind="stable")
    top = order[: int((scales > scales.max() * 1e-12).sum()) if scales.size else 0][:k]
    basis = np.zeros((top.size, cloud.seeds.size))
    basis[np.arange(top.size), rows[top]] = 1.0
    return basis


@merge_method("topk_subspace", TopkSubspaceParams, elites="quantile", step="alpha", temperature="beta")
def topk_subspace(cloud: Cloud, p: TopkSubspaceParams) -> MergeResult:
    """Δ = α·P_k m: m = Σ wᵢvᵢ with w = softmax(β·r) over the elites, P_k onto the top-k right
    singular vectors of the weighted cloud [√wᵢ·vᵢ]."""
    elite = elite_indices(cloud.rewards, p.quantile)
    weights = softmax(p.beta * cloud.rewards[elite])
    mean = cloud.combine(elite, weights)
    basis = weighted_basis(cloud, elite, weights, p.k)
    projected = (mean.values @ basis.T) @ basis
    return MergeResult(
        method="topk_subspace",
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=weights,
        amplitudes=Amplitudes(mean.seeds, projected).scaled(p.alpha),
        info={"subspace_rank": int(basis.shape[0])},
    )
