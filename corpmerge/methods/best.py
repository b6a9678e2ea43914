"""RandOpt K=1: the single best-rewarded entry."""

from __future__ import annotations

import numpy as np

from corpmerge.amplitudes import Cloud
from corpmerge.methods.registry import MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import check_rewards


class BestParams(MethodParams):
    pass


@merge_method("best", BestParams)  # linear; its one elite is the top entry (no quantile) and it has no step parameter
def best(cloud: Cloud, p: BestParams) -> MergeResult:
    """θ₀ + σ·ε(s) of the top entry (the first one listed when rewards tie)."""
    check_rewards(cloud.rewards)
    top = np.array([int(np.argmax(cloud.rewards))])
    weights = np.ones(1)
    return MergeResult(method="best", params={}, elites=top, weights=weights, amplitudes=cloud.combine(top, weights))
