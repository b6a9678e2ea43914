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

from corpmerge import noise
from corpmerge.amplitudes import Cloud
from corpmerge.methods.registry import DEFAULT_ALPHA, DEFAULT_QUANTILE, MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import elite_indices

_Noise = tuple[str, int | None, dict[str, tuple[int, ...]]]  # (scheme, rank, {name: shape}): how ε is drawn
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
    """Δ for one tensor from the elites' amplitude vectors (rows) over ``seeds``.

    ``vectors`` is a dense matrix (rows × seeds) or compressed sparse rows ``(indptr, columns,
    values)`` as ``Cloud.nonzeros`` gives them, so a single-seed population needs no dense
    matrix. Up to ``_CHUNK_BUDGET`` elements of perturbations are held at once: with few rows
    a chunk of every row is stacked (``ties_combine``); with more rows than fit, each chunk is
    reduced row by row in two passes (summed mass, then the agreeing values), drawing the noise
    twice, so memory stays bounded whatever the number of elites.
    """

    def __init__(self, seeds: np.ndarray, vectors: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray], density: float):
        if isinstance(vectors, np.ndarray):
            vectors = Cloud(seeds, vectors, np.zeros(len(vectors))).nonzeros(np.arange(len(vectors)))
        self.seeds, self.density = seeds, density
        self.indptr, self.columns, self.values = (np.asarray(a) for a in vectors)
        digest = hashlib.blake2b(digest_size=12)
        for part in (
            np.ascontiguousarray(seeds, dtype=np.int64),
            np.ascontiguousarray(self.indptr, dtype=np.int64),
            np.ascontiguousarray(self.columns, dtype=np.int64),
            np.ascontiguousarray(self.values, dtype=np.float64),
        ):
            digest.update(repr(part.shape).encode() + part.tobytes())
        self.key = f"ties:{digest.hexdigest()}:{density!r}"

    @property
    def rows(self) -> int:
        return self.indptr.size - 1

    def _perturbation(self, row: int, name: str, numel: int, offset: int, how: _Noise) -> torch.Tensor:
        """Row ``row``'s perturbation Σₖ aₖ·ε(sₖ) on [offset, offset + numel) (0 + a₁ε₁ + …, the scheme's arithmetic)."""
        scheme, rank, shapes = how
        out = torch.zeros(numel, dtype=torch.float32)
        eps = torch.empty(numel, dtype=torch.float32)
        accumulate = noise.scheme(scheme).accumulate
        for k in range(self.indptr[row], self.indptr[row + 1]):
            noise.fill_many([(eps, int(self.seeds[self.columns[k]]), name, offset)], scheme, rank=rank, shapes=shapes)
            accumulate(out, eps, float(self.values[k]))
        return out

    def _trimmed(self, row: int, name: str, numel: int, offset: int, threshold: float, how: _Noise) -> torch.Tensor:
        out = self._perturbation(row, name, numel, offset, how)
        out[out.abs() < threshold] = 0
        return out

    def __call__(self, name: str, shape: torch.Size, scheme: str = noise.DEFAULT_SCHEME, rank: int | None = None) -> torch.Tensor:
        """Δ of tensor ``name``; ``rank``: each ε is the matrix's rank-r noise ε_r."""
        numel, rows = math.prod(shape), range(self.rows)
        how: _Noise = (scheme, rank, {name: tuple(shape)})
        chunk = max(1 << 16, _CHUNK_BUDGET // max(1, len(rows)))
        if numel <= chunk and numel * len(rows) <= max(_CHUNK_BUDGET, numel):
            stacked = torch.stack([self._perturbation(r, name, numel, 0, how) for r in rows])
            for row in stacked:
                row[row.abs() < trim_threshold(row, self.density)] = 0
            return ties_combine(stacked).view(shape)
        thresholds = [trim_threshold(self._perturbation(r, name, numel, 0, how), self.density) for r in rows]
        out = torch.empty(numel, dtype=torch.float32)
        stack = chunk * len(rows) <= _CHUNK_BUDGET
        for lo in range(0, numel, chunk):
            n = min(chunk, numel - lo)
            if stack:
                stacked = torch.stack([self._perturbation(r, name, n, lo, how) for r in rows])
                stacked[stacked.abs() < torch.tensor(thresholds).unsqueeze(1)] = 0
                out[lo : lo + n] = ties_combine(stacked)
            else:
                out[lo : lo + n] = self._combine_rowwise(name, n, lo, thresholds, how)
        return out.view(shape)

    def _combine_rowwise(self, name: str, n: int, offset: int, thresholds: list[float], how: _Noise) -> torch.Tensor:
        """``ties_combine`` of the trimmed rows of one chunk, one row at a time (two passes over the rows)."""
        mass = torch.zeros(n, dtype=torch.float32)
        for r, threshold in enumerate(thresholds):
            mass += self._trimmed(r, name, n, offset, threshold, how)
        elected = torch.sign(mass)
        total, count = torch.zeros(n, dtype=torch.float32), torch.zeros(n, dtype=torch.float32)
        for r, threshold in enumerate(thresholds):
            trimmed = self._trimmed(r, name, n, offset, threshold, how)
            agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
            total += torch.where(agree, trimmed, torch.zeros_like(trimmed))
            count += agree
        return total / count.clamp(min=1)


@merge_method("ties", TiesParams, linear=False, elites="quantile", step="alpha")
def ties(cloud: Cloud, p: TiesParams) -> MergeResult:
    """TIES (trim, elect sign, disjoint mean) over the elite perturbations, times α."""
    elite = elite_indices(cloud.rewards, p.quantile)
    return MergeResult(
        method="ties",
        params=p.model_dump(by_alias=True),
        elites=elite,
        weights=np.full(len(elite), 1.0 / len(elite)),
        tensor_delta=TiesDelta(cloud.seeds, cloud.nonzeros(elite), p.density),
        multiplier=p.alpha,
    )
