"""The population: entries (seed, sigma, reward) and the deterministic expansion of a sampled spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Entry:
    """One perturbation θ₀ + sigma·ε(seed), with its support reward once known (sigma < 0: the mirror of (seed, −sigma))."""

    seed: int
    sigma: float
    reward: float | None = None


def sample_population(size: int, sigmas: list[float], seed: int, antithetic: bool = False) -> list[Entry]:
    """Expand ``{size, sigmas, seed, antithetic}`` into ``size`` entries.

    Seeds are drawn uniformly from [0, 2³¹) without repeats and each sigma uniformly from
    ``sigmas``, all from ``numpy.random.default_rng(seed)``: the same spec always gives the
    same population. ``antithetic``: ``size`` is even and the population is the ``size``/2 entries
    (s, σ) of the non-antithetic spec of that size, each followed by its mirror (s, −σ), the same
    noise ε(s) at −σ.
    """
    if antithetic:
        return [mirror for e in sample_population(size // 2, sigmas, seed) for mirror in (e, Entry(e.seed, -e.sigma))]
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


def mirror_groups(entries: list[Entry]) -> list[int]:
    """Entry i's group: the index of the first entry with its seed (a mirrored pair (s, σ), (s, −σ) shares one)."""
    first: dict[int, int] = {}
    return [first.setdefault(e.seed, i) for i, e in enumerate(entries)]
