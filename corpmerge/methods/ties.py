"""TIES merging of the elite perturbations, computed tensor by tensor while streaming.

Per tensor: trim each elite perturbation τᵢ to its ⌊density·n⌋ largest-magnitude entries (as
mergekit's magnitude trim), elect the sign of the summed trimmed mass, and average only the
values that agree with it (disjoint mean). Non-linear in the noise, so it needs the actual
noise coordinates; large tensors are done in chunks, regenerating noise slices with ``offset``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from pydantic import Field

from corpmerge.amplitudes import Cloud
from corpmerge.methods.registry import DEFAULT_ALPHA, DEFAULT_QUANTILE, MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import elite_indices
from corpmerge.noise import fill_gaussian

_CHUNK_BUDGET = 1 << 26  # float32 elements held at once across all elites (256 MiB)


class TiesParams(MethodParams):
    quantile: float = Field(default=DEFAULT_QUANTILE, ge=0, lt=1)
    density: float = Field(default=0.2, gt=0, le=1, description="fraction of each perturbation kept")
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, description="scale of the merged update")


def ties_combine(trimmed: torch.Tensor) -> torch.Tensor:
    """Sign election + disjoint mean over rows of already-trimmed perturbations (K × n)."""
    elected = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = torch.where(agree, trimmed, torch.zeros_like(trimmed)).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1)


def kept_count(numel: int, density: float) -> int:
    """⌊density·n⌋ entries survive the trim, computed as mergekit does (``int(density * n)``)."""
    return int(density * numel)


def trim_threshold(perturbation: torch.Tensor, density: float) -> float:
    """Magnitude of the ⌊density·n⌋-th largest entry: the entries at or above it survive the trim.

    ``inf`` when ⌊density·n⌋ = 0 (nothing survives; mergekit refuses such a density instead).
    """
    if density >= 1.0:
        return 0.0
    flat = perturbation.abs().flatten()
    keep = kept_count(flat.numel(), density)
    if keep == 0:
        return math.inf
    return float(torch.kthvalue(flat, flat.numel() - keep + 1).values)


class TiesDelta:
    """Δ for one tensor from the elites' amplitude vectors (rows) over ``seeds``."""

    def __init__(self, seeds: np.ndarray, vectors: np.ndarray, density: float):
        self.seeds, self.vectors, self.density = seeds, vectors, density
        digest = hashlib.blake2b(digest_size=12)
        for part in (np.ascontiguousarray(seeds, dtype=np.int64), np.ascontiguousarray(vectors, dtype=np.float64)):
            digest.update(repr(part.shape).encode() + part.tobytes())
        self.key = f"ties:{digest.hexdigest()}:{density!r}"

    def _perturbation(self, row: int, name: str, numel: int, offset: int) -> torch.Tensor:
        out = torch.zeros(numel, dtype=torch.float32)
        noise = torch.empty(numel, dtype=torch.float32)
        for col in np.flatnonzero(self.vectors[row]):
            fill_gaussian(noise.numpy(), int(self.seeds[col]), name, offset)
            out.add_(noise, alpha=float(self.vectors[row, col]))
        return out

    def __call__(self, name: str, shape: torch.Size) -> torch.Tensor:
        numel, rows = math.prod(shape), range(self.vectors.shape[0])
        chunk = max(1 << 16, _CHUNK_BUDGET // max(1, len(rows)))
        if numel <= chunk:
            stacked = torch.stack([self._perturbation(r, name, numel, 0) for r in rows])
            for row in stacked:
                row[row.abs() < trim_threshold(row, self.density)] = 0
            return ties_combine(stacked).view(shape)
        thresholds = [trim_threshold(self._perturbation(r, name, numel, 0), self.density) for r in rows]
        out = torch.empty(numel, dtype=torch.float32)
        for lo in range(0, numel, chunk):
            n = min(chunk, numel - lo)
            stacked = torch.stack([self._perturbation(r, name, n, lo) for r in rows])
            stacked[stacked.abs() < torch.tensor(thresholds).unsqueeze(1)] = 0
            out[lo : lo + n] = ties_combine(stacked)
        return out.view(shape)


@merge_method("ties", TiesParams, linear=False, elites="quantile", step="alpha")
def ties(cloud: Cloud, p: TiesParams) -> MergeResult:
    """TIES (trim, elect sign, disjoint mean) over the elite perturbations, times α."""
    elite = elite_indices(cloud.rewards, p.quantile)
    return MergeResult(
        method="ties",
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=np.full(len(elite), 1.0 / len(elite)),
        tensor_delta=TiesDelta(cloud.seeds, cloud.vectors[elite], p.density),
        multiplier=p.alpha,
    )
