"""The population: entries (seed, sigma, reward), the deterministic expansion of a sampled spec, the rules a listed one obeys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

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


class Listed(Protocol):
    """An entry as a recipe lists it."""

    seed: int
    sigma: float
    reward: float | None


def check_listed_population(entries: Sequence[Listed]) -> None:
    """Raise ValueError (naming ``population[i]``) unless the list is not empty, its seeds are unique except a mirrored
    pair (s, σ) and (s, −σ) with both rewards or neither, and a negative σ is only ever such a mirror."""
    if not entries:
        raise ValueError("the list is empty, so nothing can be merged; list {seed, sigma, reward} entries or sample with {size, sigmas, seed}")
    first: dict[int, int] = {}
    paired: set[int] = set()
    for i, entry in enumerate(entries):
        j = first.setdefault(entry.seed, i)
        if j == i:
            continue
        if entry.seed in paired or entries[j].sigma != -entry.sigma:
            raise ValueError(
                f"population[{i}].seed: seed {entry.seed} appears twice (also population[{j}]); seeds must be unique, "
                "except a mirrored pair {seed: s, sigma: σ} and {seed: s, sigma: −σ}"
            )
        if (entries[j].reward is None) != (entry.reward is None):
            raise ValueError(f"population[{i}].reward: a mirrored pair (here with population[{j}]) is scored together; give both rewards or neither")
        paired.add(entry.seed)
    for i, entry in enumerate(entries):
        if entry.sigma < 0 and entry.seed not in paired:
            raise ValueError(
                f"population[{i}].sigma: Input should be greater than 0; a negative σ is only the mirror of a listed "
                f"{{seed: {entry.seed}, sigma: {-entry.sigma!r}}} entry"
            )
