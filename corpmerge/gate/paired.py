"""The validation gate: paired comparison against the base on a held-out fold.

Per example dⱼ = correct(candidate) − correct(base) ∈ {−1, 0, 1}; fixes F = #{dⱼ = 1},
regressions R = #{dⱼ = −1}; constructive score S = (|F| − λ_reg·|R|)/n;
LCB = mean(d) − z·se(d̄) (one-sided). A candidate passes when S > 0 and LCB > 0.

se(d̄) is sd(d)/√n (sample sd) when the examples are independent, and the cluster-robust
standard error (:func:`clustered_se`) when they come in clusters (a task's ``metadata.cluster_by``:
one question asked with other choices, say): the gate, the probe and the held-out report use the same one.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from corpmerge.comparison import PairedStats


def clustered_se(d: np.ndarray, clusters: Sequence[str] | None) -> float:
    """Standard error of the mean of ``d``, cluster-robust when ``clusters`` labels the examples.

    Var(d̄) = G/(G − 1)·Σ_g (Σ_{j∈g} (dⱼ − d̄))²/n² over the G clusters; with every example its own
    cluster (or ``clusters`` None) this is sd(d)²/n, the sample variance over n. 0 for one cluster.
    """
    n = d.size
    if clusters is None:
        return float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    _, group = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(group, weights=d - d.mean())
    g = sums.size
    return math.sqrt(g / (g - 1) * float((sums**2).sum()) / n**2) if g > 1 else 0.0


def paired_stats(base: Sequence[bool], candidate: Sequence[bool], z: float, regression_penalty: float, clusters: Sequence[str] | None = None) -> PairedStats:
    """Fixes, regressions, constructive score and one-sided LCB of candidate − base; with ``clusters`` the LCB is
    cluster-robust, and the per-example one is kept beside it (``lcb_per_example``) with the number of clusters."""
    b = np.asarray(base, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if b.shape != c.shape or b.size == 0:
        raise ValueError("paired statistics need two equally long, non-empty score vectors")
    d = c - b
    n = d.size
    fixes, regressions = int((d > 0).sum()), int((d < 0).sum())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    mean = float(d.mean())
    plain = mean - z * sd / math.sqrt(n)
    clustered = clusters is not None
    return PairedStats(
        n=n,
        fixes=fixes,
        regressions=regressions,
        constructive_score=(fixes - regression_penalty * regressions) / n,
        mean_diff=mean,
        sd=sd,
        lcb=mean - z * clustered_se(d, clusters) if clustered else plain,
        base_accuracy=float(b.mean()),
        accuracy=float(c.mean()),
        clusters=len(set(clusters)) if clustered else None,
        lcb_per_example=plain if clustered else None,
    )


def paired_interval(base: Sequence[bool], candidate: Sequence[bool], z: float = 1.96) -> tuple[float, float, float]:
    """Mean paired difference and its two-sided normal interval (95% by default)."""
    d = np.asarray(candidate, dtype=float) - np.asarray(base, dtype=float)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    half = z * sd / math.sqrt(d.size)
    mean = float(d.mean())
    return mean, mean - half, mean + half


def clustered_interval(base: Sequence[bool], candidate: Sequence[bool], clusters: Sequence[str] | None, z: float = 1.96) -> tuple[float, float, float]:
    """Mean paired difference d̄ with a two-sided normal interval d̄ ± z·se, se cluster-robust (:func:`clustered_se`)
    when ``clusters`` is given; with every example its own cluster (or ``clusters`` None) this is :func:`paired_interval`."""
    if clusters is None:
        return paired_interval(base, candidate, z)
    d = np.asarray(candidate, dtype=float) - np.asarray(base, dtype=float)
    half = z * clustered_se(d, clusters)
    mean = float(d.mean())
    return mean, mean - half, mean + half


def pick_multiplier(lcbs: dict[float, float]) -> float | None:
    """The largest probe multiplier whose LCB on the probe fold is > 0, or None."""
    passing = [m for m, lcb in lcbs.items() if lcb > 0]
    return max(passing) if passing else None
