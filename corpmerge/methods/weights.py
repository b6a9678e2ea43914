"""Shared pieces of the methods' math: elite sets, softmax, z-scores."""

from __future__ import annotations

import numpy as np


def elite_indices(rewards: np.ndarray, quantile: float) -> np.ndarray:
    """E = {i : rᵢ ≥ quantile_q(r)} (linear interpolation; ties at the threshold kept)."""
    threshold = np.quantile(rewards, quantile, method="linear")
    return np.flatnonzero(rewards >= threshold - 1e-12 * max(1.0, abs(threshold)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Max-shifted softmax."""
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def zscore(values: np.ndarray) -> np.ndarray:
    """Standardise with the population std; all zeros when the std is ≤ 1e-12."""
    std = values.std()
    if std <= 1e-12:
        return np.zeros_like(values)
    return (values - values.mean()) / std
