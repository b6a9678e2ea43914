"""Shared pieces of the methods' math: reward checks, elite sets, softmax, z-scores.

Degenerate populations have a defined outcome: no entry (or a non-finite reward) is a one-line
error; one entry is its own elite set; equal rewards make every entry an elite; the top entry
is always an elite, whatever the quantile, so no population ends with an empty elite set.
"""

from __future__ import annotations

import numpy as np

from corpmerge.errors import CorpmergeError


def check_rewards(rewards: np.ndarray) -> None:
    """Refuse what cannot be merged: no entries, or a reward that is not a finite number."""
    if rewards.size == 0:
        raise CorpmergeError("population: no entries, so nothing can be merged; give at least one entry")
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise CorpmergeError(f"population[{bad[0]}].reward: {rewards[bad[0]]} is not a finite number; rewards must be finite")


def elite_indices(rewards: np.ndarray, quantile: float) -> np.ndarray:
    """E = {i : rᵢ ≥ quantile_q(r)} (linear interpolation; ties at the threshold kept; never empty)."""
    check_rewards(rewards)
    threshold = min(float(np.quantile(rewards, quantile, method="linear")), float(rewards.max()))
    return np.flatnonzero(rewards >= threshold - 1e-12 * max(1.0, abs(threshold)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Max-shifted softmax."""
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def effective_size(weights: np.ndarray) -> float:
    """ESS = 1/Σwᵢ² of weights normalised to sum 1 (from 1, all weight on one entry, to n, equal weights)."""
    w = weights / weights.sum()
    return float(1.0 / np.sum(w**2))


def zscore(values: np.ndarray) -> np.ndarray:
    """Standardise with the population std; all zeros when the std is ≤ 1e-12."""
    std = values.std()
    if std <= 1e-12:
        return np.zeros_like(values)
    return (values - values.mean()) / std
