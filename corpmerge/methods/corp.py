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


def compatibility(vectors: np.ndarray, proposal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alignment aᵢ = cos(vᵢ, m) and dispersion dᵢ = ‖vᵢ‖² − ⟨vᵢ, m̂⟩²."""
    norms = np.linalg.norm(vectors, axis=1)
    projection = vectors @ proposal / np.linalg.norm(proposal)
    return projection / norms, norms**2 - projection**2


@merge_method("corp", CorpParams)
def corp(cloud: Cloud, p: CorpParams) -> MergeResult:
    """CoRP: softmax(β·r + γ·z(alignment) − λ·z(dispersion)) over the elites, times α."""
    elite = elite_indices(cloud.rewards, p.quantile)
    rewards, vectors = cloud.rewards[elite], cloud.vectors[elite]
    proposal = softmax(p.beta * rewards) @ vectors
    alignment, dispersion = compatibility(vectors, proposal)
    weights = softmax(p.beta * rewards + p.gamma * zscore(alignment) - p.lambda_ * zscore(dispersion))
    return MergeResult(
        method="corp",
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=weights,
        amplitudes=cloud.combine(elite, weights).scaled(p.alpha),
    )
