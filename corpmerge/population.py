"""The population: entries (seed, sigma, reward) and the deterministic expansion of a sampled spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Entry:
    """One perturbation θ₀ + sigma·ε(seed), with its support reward once known."""

    seed: int
    sigma: float
    reward: float | None = None


def sample_population(size: int, sigmas: list[float], seed: int) -> list[Entry]:
    """Expand ``{size, sigmas, seed}`` into ``size`` entries with unique seeds.

    Seeds are drawn uniformly from [0, 2³¹) without repeats and each sigma uniformly from
    ``sigmas``, all from ``numpy.random.default_rng(seed)``: the same spec always gives the
    same population.
    """
    rng = np.random.default_rng(seed)
    seeds: list[int] = []
    seen: set[int] = set()
    while len(seeds) < size:
        for s in rng.integers(0, MAX_SEED, size=size - len(seeds)).tolist():
            if s not in seen:
                seen.add(s)
                seeds.append(s)
    picks = rng.integers(0, len(sigmas), size=size)
    return [Entry(seed=s, sigma=float(sigmas[i])) for s, i in zip(seeds, picks.tolist())]
