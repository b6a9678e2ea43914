"""Reward-weighted average of the elites (CoRP with γ = λ = 0)."""

from __future__ import annotations

from pydantic import Field

from corpmerge.amplitudes import Cloud
from corpmerge.methods.registry import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_QUANTILE, MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import elite_indices, softmax


class RewardAvgParams(MethodParams):
    quantile: float = Field(default=DEFAULT_QUANTILE, ge=0, lt=1)
    beta: float = Field(default=DEFAULT_BETA, ge=0)
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0)


@merge_method("reward_avg", RewardAvgParams, elites="quantile", step="alpha", temperature="beta")
def reward_avg(cloud: Cloud, p: RewardAvgParams) -> MergeResult:
    """Δ = α·Σ softmax(β·r)ᵢ σᵢε(sᵢ) over the elites."""
    elite = elite_indices(cloud.rewards, p.quantile)
    weights = softmax(p.beta * cloud.rewards[elite])
    return MergeResult(
        method="reward_avg",
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=weights,
        amplitudes=cloud.combine(elite, weights).scaled(p.alpha),
    )
