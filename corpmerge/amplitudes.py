"""Amplitude space: every update is Δ = Σₛ aₛ·ε(s), stored as (seeds, amplitudes).

Distinct ε(s)/√D are orthonormal up to O(1/√D), so inner products of updates (in
per-coordinate units) are inner products of their amplitude vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from corpmerge import noise
from corpmerge.errors import CorpmergeError
from corpmerge.population import Entry

MAX_MIRRORED_DENSE = 20_000  # entries of a population with mirrored pairs (its cloud is N × N/2 dense: 1.6 GB at this bound)


@dataclass(frozen=True)
class Amplitudes:
    """Δ = Σ values[j]·ε(seeds[j])."""

    seeds: np.ndarray
    values: np.ndarray

    def scaled(self, factor: float) -> "Amplitudes":
        return Amplitudes(self.seeds, self.values * factor)

    def plus(self, other: "Amplitudes") -> "Amplitudes":
        """The sum of two updates, over the union of their seeds."""
        seeds = np.union1d(self.seeds, other.seeds)
        values = np.zeros(seeds.size)
        np.add.at(values, np.searchsorted(seeds, self.seeds), self.values)
        np.add.at(values, np.searchsorted(seeds, other.seeds), other.values)
        return Amplitudes(seeds, values)

    def nonzero(self) -> "Amplitudes":
        keep = self.values != 0
        return Amplitudes(self.seeds[keep], self.values[keep])

    def rms(self) -> float:
        """Per-coordinate RMS of Δ (= ‖a‖₂ under orthonormal noises)."""
        return float(np.linalg.norm(self.values))

    def table(self) -> list[dict[str, float | int]]:
        """The lineage table: one row per seed with a non-zero amplitude."""
        nz = self.nonzero()
        return [{"seed": int(s), "amplitude": float(a)} for s, a in zip(nz.seeds, nz.values)]

    def delta(
        self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None, scheme: str = noise.DEFAULT_SCHEME, rank: int | None = None
    ) -> torch.Tensor:
        """Materialise Δ for one tensor in float32 on the CPU: Δ = ε₁·a₁, then Δ += aⱼ·εⱼ in seed order
        (with the scheme's arithmetic: ``noise.Scheme.accumulate``); with ``rank``, ε is the matrix's rank-r noise ε_r.

        Noise for several seeds is drawn in one batch (``scratch`` is reused for it when large
        enough); the result is a new tensor.
        """
        nz = self.nonzero()
        numel = math.prod(shape)
        if nz.seeds.size == 0:
            return torch.zeros(shape, dtype=torch.float32)
        per_batch = max(1, min(nz.seeds.size, noise.NOISE_BATCH // max(1, numel)))
        if scratch is None or scratch.numel() < per_batch * numel:
            scratch = torch.empty(per_batch * numel, dtype=torch.float32)
        accumulate = noise.scheme(scheme).accumulate
        acc: torch.Tensor | None = None
        pairs = list(zip(nz.seeds.tolist(), nz.values.tolist()))
        for start in range(0, len(pairs), per_batch):
            batch = pairs[start : start + per_batch]
            eps = [scratch[k * numel : (k + 1) * numel] for k in range(len(batch))]
            noise.fill_many([(e, int(seed), name, 0) for e, (seed, _) in zip(eps, batch)], scheme, rank=rank, shapes={name: tuple(shape)})
            for e, (_, amp) in zip(eps, batch):
                if acc is None:
                    acc = torch.mul(e, amp)
                else:
                    accumulate(acc, e, amp)
        return acc.view(shape)


class Cloud:
    """The rewarded population in amplitude space: row i is entry i's update Δᵢ over ``seeds``.

    Two storages, the same operations: dense rows (stage 2's local populations, whose rows are
    multi-seed amplitude vectors), or, for single-seed entries (row i = σᵢ·e(sᵢ), a scaled basis
    vector), only the vector σ: a population of N entries then costs O(N) memory, and every
    operation below O(N) time, where the dense N×N matrix would not fit (N = 10⁵ is 75 GiB).
    Both give the same numbers: a single-seed row's sums have one non-zero term.
    """

    def __init__(self, seeds: np.ndarray, vectors: np.ndarray, rewards: np.ndarray):
        """A cloud of dense rows: ``vectors[i]`` is entry i's amplitude vector over ``seeds``."""
        self.seeds, self.rewards = seeds, rewards
        self._dense: np.ndarray | None = vectors
        self._sigmas: np.ndarray | None = None

    @classmethod
    def single_seed(cls, seeds: np.ndarray, sigmas: np.ndarray, rewards: np.ndarray) -> "Cloud":
        """Entry i is σᵢ·ε(seeds[i]): the diagonal cloud diag(σ), stored as σ."""
        cloud = cls(seeds, None, rewards)  # type: ignore[arg-type]
        cloud._sigmas = sigmas
        return cloud

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> "Cloud":
        """Single-seed entries: entry i is σᵢ·ε(sᵢ), a scaled basis vector. With mirrored pairs ((s, σ) and (s, −σ):
        anti-parallel rows) the rows are dense over the distinct seeds, so inner products see a pair's geometry
        (and an update lists each seed once); such a population is bounded by ``MAX_MIRRORED_DENSE`` entries."""
        if any(e.reward is None for e in entries):
            raise ValueError("every entry needs a reward")
        seeds = np.array([e.seed for e in entries], dtype=np.int64)
        sigmas = np.array([e.sigma for e in entries], dtype=np.float64)
        rewards = np.array([e.reward for e in entries], dtype=np.float64)
        distinct, columns = np.unique(seeds, return_inverse=True)
        if distinct.size == seeds.size:
            return cls.single_seed(seeds, sigmas, rewards)
        if seeds.size > MAX_MIRRORED_DENSE:
            raise CorpmergeError(
                f"population: a mirrored population of {seeds.size:,} entries is above the {MAX_MIRRORED_DENSE:,} this "
                "version merges (its amplitude cloud is dense); use fewer entries"
            )
        vectors = np.zeros((seeds.size, distinct.size))
        vectors[np.arange(seeds.size), columns] = sigmas
        return cls(distinct, vectors, rewards)

    @property
    def size(self) -> int:
        return int(self.rewards.size)

    @property
    def sigmas(self) -> np.ndarray | None:
        """σ of a single-seed cloud (row i = σᵢ·e_i); None for dense rows."""
        return self._sigmas

    @property
    def vectors(self) -> np.ndarray:
        """The rows as a dense matrix; for a single-seed cloud this builds diag(σ), N×N: small clouds only."""
        return self._dense if self._dense is not None else np.diag(self._sigmas)

    def single_seed_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(seed, σ) of each row when every row is one scaled noise σ·ε(seed) (a population, mirrored pairs too), else None."""
        if self._dense is None:
            return self.seeds[rows], self._sigmas[rows]
        block = self._dense[rows]
        if not np.all(np.count_nonzero(block, axis=1) == 1):
            return None
        columns = np.argmax(block != 0, axis=1)
        return self.seeds[columns], block[np.arange(len(rows)), columns]

    def norms(self, rows: np.ndarray | None = None) -> np.ndarray:
        """‖vᵢ‖ of the rows (all rows by default)."""
        rows = np.arange(self.size) if rows is None else rows
        if self._dense is not None:
            return np.linalg.norm(self._dense[rows], axis=1)
        sigmas = self._sigmas[rows]
        return np.sqrt(sigmas * sigmas)  # what the norm of a row with one non-zero computes, bit for bit

    def dot(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """⟨vᵢ, vector⟩ for each row i of ``rows`` (``vector`` over ``seeds``)."""
        if self._dense is not None:
            return self._dense[rows] @ vector
        return self._sigmas[rows] * vector[rows]

    def combine(self, rows: np.ndarray, weights: np.ndarray) -> Amplitudes:
        """Σ weights[k]·vectors[rows[k]]."""
        if self._dense is not None:
            return Amplitudes(self.seeds, weights @ self._dense[rows])
        values = np.zeros(self.seeds.size)
        values[rows] = weights * self._sigmas[rows]
        return Amplitudes(self.seeds, values)

    def nonzeros(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows as compressed sparse rows (indptr, columns into ``seeds``, values), columns ascending."""
        if self._dense is not None:
            block = self._dense[rows]
            row_of, columns = np.nonzero(block)
            indptr = np.searchsorted(row_of, np.arange(len(rows) + 1))
            return indptr, columns, block[row_of, columns]
        rows = np.asarray(rows, dtype=np.int64)
        return np.arange(rows.size + 1), rows, self._sigmas[rows]

    def block(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(columns, matrix): the rows restricted to the seeds they use, as a dense |rows| × |columns| matrix."""
        if self._dense is not None:
            v = self._dense[rows]
            support = np.flatnonzero(np.any(v != 0, axis=0))
            return support, v[:, support]
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        matrix = np.zeros((rows.size, rows.size))
        matrix[order, np.arange(rows.size)] = self._sigmas[rows[order]]
        return rows[order], matrix
