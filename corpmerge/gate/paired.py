"""The validation gate: paired comparison against the base on a held-out fold.

Per example dⱼ = correct(candidate) − correct(base) ∈ {−1, 0, 1}; fixes F = #{dⱼ = 1},
regressions R = #{dⱼ = −1}; constructive score S = (|F| − λ_reg·|R|)/n;
LCB = mean(d) − z·sd(d)/√n (one-sided, sample sd). A candidate passes when S > 0 and LCB > 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from corpmerge.comparison import PairedStats


def paired_stats(base: Sequence[bool], candidate: Sequence[bool], z: float, regression_penalty: float) -> PairedStats:
    """Fixes, regressions, constructive score and one-sided LCB of candidate − base."""
    b = np.asarray(base, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if b.shape != c.shape or b.size == 0:
        raise ValueError("paired statistics need two equally long, non-empty score vectors")
    d = c - b
    n = d.size
    fixes, regressions = int((d > 0).sum()), int((d < 0).sum())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    mean = float(d.mean())
    return PairedStats(
        n=n,
        fixes=fixes,
        regressions=regressions,
        constructive_score=(fixes - regression_penalty * regressions) / n,
        mean_diff=mean,
        sd=sd,
        lcb=mean - z * sd / math.sqrt(n),
        base_accuracy=float(b.mean()),
        accuracy=float(c.mean()),
    )


def paired_interval(base: Sequence[bool], candidate: Sequence[bool], z: float = 1.96) -> tuple[float, float, float]:
    """Mean paired difference and its two-sided normal interval (95% by default)."""
    d = np.asarray(candidate, dtype=float) - np.asarray(base, dtype=float)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    half = z * sd / math.sqrt(d.size)
    mean = float(d.mean())
    return mean, mean - half, mean + half


def clustered_interval(base: Sequence[bool], candidate: Sequence[bool], clusters: Sequence[str] | None, z: float = 1.96) -> tuple[float, float, float]:
    """Mean paired difference d̄ with a cluster-robust two-sided normal interval.

    Examples of one cluster (one question asked with other choices, say) are not independent, so the
    variance of d̄ sums the centred differences within each cluster first: Var = G/(G − 1)·Σ_g (Σ_{j∈g} (dⱼ − d̄))²/n²
    over G clusters. With every example its own cluster (or ``clusters`` None) this is :func:`paired_interval`.
    """
    if clusters is None:
        return paired_interval(base, candidate, z)
    d = np.asarray(candidate, dtype=float) - np.asarray(base, dtype=float)
    _, group = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(group, weights=d - d.mean())
    g = sums.size
    var = g / (g - 1) * float((sums**2).sum()) / d.size**2 if g > 1 else 0.0
    half = z * math.sqrt(var)
    mean = float(d.mean())
    return mean, mean - half, mean + half


def pick_multiplier(lcbs: dict[float, float]) -> float | None:
    """The largest probe multiplier whose LCB on the probe fold is > 0, or None."""
    passing = [m for m, lcb in lcbs.items() if lcb > 0]
    return max(passing) if passing else None
