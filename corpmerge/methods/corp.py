"""CoRP stage 1: reward-tilted proposal, compatibility reweighting, step α."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from corpmerge.amplitudes import Cloud
from corpmerge.methods.registry import MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import elite_indices, softmax, zscore


class CorpParams(MethodParams):
    quantile: float = Field(default=0.7, ge=0, lt=1, description="elite threshold: rewards ≥ this quantile")
    beta: float = Field(default=10.0, ge=0, description="reward temperature on raw rewards in [0, 1]")
    alpha: float = Field(default=1.0, gt=0, description="step: α = 1 is the weighted mean")
    gamma: float = Field(default=1.0, ge=0, description="weight of the alignment z-score")
    lambda_: float = Field(default=1.0, ge=0, alias="lambda", description="weight of the dispersion z-score")


def compatibility(vectors: np.ndarray | Cloud, proposal: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Alignment aᵢ = cos(vᵢ, m) and dispersion dᵢ = ‖vᵢ‖² − ⟨vᵢ, m̂⟩², over the rows of a matrix or of a cloud
    (``rows`` of it; all by default)."""
    cloud = vectors if isinstance(vectors, Cloud) else Cloud(np.arange(vectors.shape[1]), vectors, np.zeros(len(vectors)))
    rows = np.arange(cloud.size) if rows is None else rows
    norms = cloud.norms(rows)
    projection = cloud.dot(rows, proposal) / np.linalg.norm(proposal)
    return projection / norms, norms**2 - projection**2


@merge_method("corp", CorpParams)
def corp(cloud: Cloud, p: CorpParams) -> MergeResult:
    """CoRP: softmax(β·r + γ·z(alignment) − λ·z(dispersion)) over the elites, times α."""
    elite = elite_indices(cloud.rewards, p.quantile)
    rewards = cloud.rewards[elite]
    proposal = cloud.combine(elite, softmax(p.beta * rewards)).values
    alignment, dispersion = compatibility(cloud, proposal, elite)
    weights = softmax(p.beta * rewards + p.gamma * zscore(alignment) - p.lambda_ * zscore(dispersion))
    return MergeResult(
        method="corp",
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=weights,
        amplitudes=cloud.combine(elite, weights).scaled(p.alpha),
    )
