"""RandOpt's prediction-level ensemble: a majority vote of the top-K perturbed models.

Votes are the models' extracted answers; empty extractions are dropped; a tie goes to the
answer of the best-ranked model among the tied answers. The ensemble's score on an example
is the winning answer's score as the task's own metric gave it (the best-ranked model that
voted for it), so partial credit never counts as correct.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np


def majority_vote(predictions: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]]) -> np.ndarray:
    """Per-example correctness of the vote; ``predictions[m][j]`` is model m's answer to example j,
    models in rank order (best first)."""
    n_models = len(predictions)
    n_examples = len(predictions[0]) if n_models else 0
    result = np.zeros(n_examples)
    for j in range(n_examples):
        votes = Counter(p[j] for p in predictions if p[j] is not None)
        if not votes:
            continue
        top = max(votes.values())
        for m in range(n_models):  # best-ranked model holding a most-voted answer wins the tie
            if predictions[m][j] is not None and votes[predictions[m][j]] == top:
                result[j] = float(correct[m][j])
                break
    return result


def recovered_fraction(base: float, ensemble: float, merged: float, intervals: tuple[tuple[float, float], tuple[float, float]] | None = None) -> float | None:
    """Share (merged − base) / (ensemble − base) of the ensemble's gain over the base that the single merged model keeps.

    ``intervals``: the 95% intervals (low, high) of the ensemble's and the merged model's gains; when either covers 0
    a gain is not shown to exist and the ratio of two such gains means nothing: None."""
    gain = ensemble - base
    if intervals is not None and any(low <= 0 <= high for low, high in intervals):
        return None
    return None if abs(gain) < 1e-12 else (merged - base) / gain
