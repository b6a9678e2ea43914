"""ES: the whole population's shaped-reward estimator (OpenAI-ES, ES at scale, EGGROLL, MeZO), mirrored pairs included.

Over the entries E = {i : rᵢ ≥ quantile_q(r)} (q = 0, the default: every entry), n = |E|:

    aᵢ = α·f(rᵢ)·σᵢ/n,    Δ = Σᵢ aᵢ·ε(sᵢ)

with f the shaping of r over E: ``zscore`` (r − mean)/sd (population sd; all 0 when sd ≤ 1e-12) or
``rank``, centred ranks rankᵢ/(n − 1) − 1/2 in [−1/2, 1/2] (ranks from 0, ties share their mean rank;
n = 1 gives 0). A mirrored member has σᵢ < 0, so a pair (s, ±σ) in E adds up on its seed to the
standard antithetic form aₛ = α·σ·(f(r₊) − f(r₋))/n; under ``zscore`` that is α·σ·(r₊ − r₋)/(n·sd(r)).
The update is one amplitude per seed. Its carriers are the seeds with aₛ ≠ 0 (a pair is one), with
weights |aₛ|, so the reported ESS is (Σ|aₛ|)²/Σaₛ², from 1 (one seed carries the step) to the number
of seeds (all carry it equally). For a cloud of dense rows vᵢ (stage 2), aᵢ·ε(sᵢ) reads (α·f(rᵢ)/n)·vᵢ
and row i's weight is |α·f(rᵢ)/n|·‖vᵢ‖.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.methods.registry import DEFAULT_ALPHA, MergeResult, MethodParams, merge_method
from corpmerge.methods.weights import elite_indices, zscore


class EsParams(MethodParams):
    shaping: Literal["zscore", "rank"] = Field(default="zscore", description="f: z-scored rewards, or centred ranks in [−0.5, 0.5]")
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, description="step: aᵢ = α·f(rᵢ)·σᵢ/n")
    quantile: float = Field(default=0.0, ge=0, lt=1, description="entries with rᵢ ≥ this quantile carry the step; 0: every entry")


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """rankᵢ/(n − 1) − 1/2 (ranks from 0, ties share their mean rank); 0 for n = 1."""
    if values.size == 1:
        return np.zeros(1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - counts + (counts - 1) / 2
    return mean_rank[inverse] / (values.size - 1) - 0.5


def shaped(rewards: np.ndarray, shaping: str) -> np.ndarray:
    """f(r): ``zscore`` or ``rank`` (centred ranks)."""
    return zscore(rewards) if shaping == "zscore" else centred_ranks(rewards)


@merge_method("es", EsParams, elites="quantile", step="alpha")
def es(cloud: Cloud, p: EsParams) -> MergeResult:
    """ES: Δ = α/n·Σ f(rᵢ)·σᵢε(sᵢ) over every entry, f = z-score or centred rank; a mirrored pair gives α·σ·(f(r₊) − f(r₋))/n."""
    rows = elite_indices(cloud.rewards, p.quantile)
    coefficients = p.alpha * shaped(cloud.rewards[rows], p.shaping) / rows.size
    single = cloud.single_seed_rows(rows)
    if single is None:
        amplitudes = cloud.combine(rows, coefficients)
        carriers, weights = rows, np.abs(coefficients) * cloud.norms(rows)
    else:
        row_seeds, row_sigmas = single
        seeds, first, inverse = np.unique(row_seeds, return_index=True, return_inverse=True)
        values = np.zeros(seeds.size)
        np.add.at(values, inverse, coefficients * row_sigmas)
        amplitudes = Amplitudes(seeds, values)
        order = np.argsort(first)  # carriers in population order, each seed at its first entry
        carriers, weights = rows[first[order]], np.abs(values[order])
    keep = weights > 0
    if not keep.any():
        raise CorpmergeError(
            "population: es has no step here: every shaped reward cancels (all rewards equal, or every mirrored pair "
            "scored r₊ = r₋); score more examples, use a larger σ, or another merge_method"
        )
    return MergeResult(
        method="es",
        params=p.model_dump(by_alias=True),
        elites=carriers[keep],
        weights=weights[keep],
        amplitudes=amplitudes,
    )
