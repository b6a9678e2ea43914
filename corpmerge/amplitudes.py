"""Amplitude space: every update is Δ = Σₛ aₛ·ε(s), stored as (seeds, amplitudes).

Distinct ε(s)/√D are orthonormal up to O(1/√D), so inner products of updates (in
per-coordinate units) are inner products of their amplitude vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from corpmerge.noise import NOISE_BATCH, fill_many
from corpmerge.population import Entry


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

    def delta(self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Materialise Δ for one tensor in float32: Δ = ε₁·a₁, then Δ += aⱼ·εⱼ in seed order.

        Noise for several seeds is drawn in one parallel batch (``scratch`` is reused for it
        when large enough); the result is a new tensor.
        """
        nz = self.nonzero()
        numel = math.prod(shape)
        if nz.seeds.size == 0:
            return torch.zeros(shape, dtype=torch.float32)
        per_batch = max(1, min(nz.seeds.size, NOISE_BATCH // max(1, numel)))
        if scratch is None or scratch.numel() < per_batch * numel:
            scratch = torch.empty(per_batch * numel, dtype=torch.float32)
        acc: torch.Tensor | None = None
        pairs = list(zip(nz.seeds.tolist(), nz.values.tolist()))
        for start in range(0, len(pairs), per_batch):
            batch = pairs[start : start + per_batch]
            noises = [scratch[k * numel : (k + 1) * numel] for k in range(len(batch))]
            fill_many([(noise.numpy(), int(seed), name) for noise, (seed, _) in zip(noises, batch)])
            for noise, (_, amp) in zip(noises, batch):
                if acc is None:
                    acc = torch.mul(noise, amp)
                else:
                    acc.add_(noise, alpha=amp)
        return acc.view(shape)


@dataclass(frozen=True)
class Cloud:
    """The rewarded population in amplitude space: row i of ``vectors`` is entry i's update."""

    seeds: np.ndarray
    vectors: np.ndarray
    rewards: np.ndarray

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> "Cloud":
        """Single-seed entries: entry i is σᵢ·ε(sᵢ), a scaled basis vector."""
        if any(e.reward is None for e in entries):
            raise ValueError("every entry needs a reward")
        seeds = np.array([e.seed for e in entries], dtype=np.int64)
        vectors = np.diag(np.array([e.sigma for e in entries], dtype=np.float64))
        rewards = np.array([e.reward for e in entries], dtype=np.float64)
        return cls(seeds, vectors, rewards)

    def combine(self, rows: np.ndarray, weights: np.ndarray) -> Amplitudes:
        """Σ weights[k]·vectors[rows[k]]."""
        return Amplitudes(self.seeds, weights @ self.vectors[rows])
