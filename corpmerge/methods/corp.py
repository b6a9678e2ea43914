"""CoRP stage 1: reward-tilted proposal, compatibility reweighting, step α."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from corpmerge.amplitudes import Cloud
from corpmerge.methods.registry import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_QUANTILE, MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import effective_size, elite_indices, softmax, zscore


class CorpParams(MethodParams):
    quantile: float = Field(default=DEFAULT_QUANTILE, ge=0, lt=1, description="elite threshold: rewards ≥ this quantile")
    beta: float = Field(default=DEFAULT_BETA, ge=0, description="reward temperature on raw rewards in [0, 1]")
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, description="step: α = 1 is the weighted mean")
    gamma: float = Field(default=1.0, ge=0, description="weight of the alignment z-score")
    lambda_: float = Field(default=1.0, ge=0, alias="lambda", description="weight of the dispersion z-score")


def compatibility(vectors: np.ndarray | Cloud, proposal: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Alignment aᵢ = cos(vᵢ, m) and dispersion dᵢ = ‖vᵢ‖² − ⟨vᵢ, m̂⟩², over the rows of a matrix or of a cloud
    (``rows`` of it; all by default). A zero proposal (elites that cancel: the two halves of a mirrored pair at equal
    weight) has no direction: every aᵢ = 0 and dᵢ = ‖vᵢ‖²."""
    cloud = vectors if isinstance(vectors, Cloud) else Cloud(np.arange(vectors.shape[1]), vectors, np.zeros(len(vectors)))
    rows = np.arange(cloud.size) if rows is None else rows
    norms = cloud.norms(rows)
    length = np.linalg.norm(proposal)
    projection = cloud.dot(rows, proposal) / length if length > 0 else np.zeros(len(rows))
    return projection / norms, norms**2 - projection**2


def compatibility_logits(cloud: Cloud, elite: np.ndarray, proposal_weights: np.ndarray, p: CorpParams) -> np.ndarray:
    """γ·z(a) − λ·z(d) over the elites, against the proposal m = Σ w¹ᵢvᵢ (O(|elite|) for a single-seed cloud)."""
    alignment, dispersion = compatibility(cloud, cloud.combine(elite, proposal_weights).values, elite)
    return p.gamma * zscore(alignment) - p.lambda_ * zscore(dispersion)


def corp_result(cloud: Cloud, p: CorpParams, method: str, compat: np.ndarray, elite: np.ndarray) -> MergeResult:
    """w² = softmax(β·r + compat) over ``elite``, Δ = α·Σ w²ᵢvᵢ; records the ESS of w² and of w¹ = softmax(β·r)."""
    reward_logits = p.beta * cloud.rewards[elite]
    weights = softmax(reward_logits + compat)
    return MergeResult(
        method=method,
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=weights,
        amplitudes=cloud.combine(elite, weights).scaled(p.alpha),
        diagnostics={"ess_without_compatibility": effective_size(softmax(reward_logits))},
    )


@merge_method("corp", CorpParams, elites="quantile", step="alpha", temperature="beta")
def corp(cloud: Cloud, p: CorpParams) -> MergeResult:
    """CoRP: softmax(β·r + γ·z(alignment) − λ·z(dispersion)) over the elites, times α."""
    elite = elite_indices(cloud.rewards, p.quantile)
    compat = compatibility_logits(cloud, elite, softmax(p.beta * cloud.rewards[elite]), p)
    return corp_result(cloud, p, "corp", compat, elite)
