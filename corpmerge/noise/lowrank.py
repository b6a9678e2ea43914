"""Rank-r noise: for a matrix W (m × n), ε_r(s)[W] = Uᵀ·V·c with c = float32(1/√r).

The factors are ordinary noise of the recipe's scheme under derived names, r rows each, row-major:

    U[k, i] = ε(s)[name + ":lowrank.U"][k·m + i]   (r × m)
    V[k, j] = ε(s)[name + ":lowrank.V"][k·n + j]   (r × n)

and, in IEEE float32 with every operation rounded to nearest even and no fused multiply-add,

    P = U[0, i]·V[0, j], then P = P + U[k, i]·V[k, j] for k = 1 … r − 1 (a product, then a sum)
    ε_r[i, j] = P·c

Every element has variance Σₖ Var(U)·Var(V)/r = 1, as at full rank; the factors of rank r are the first r
rows of those of any larger rank. Any window of ε_r is computed from its rows of U and the columns of V it
needs, and equals that window of the whole (tested against an independent NumPy construction).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

U_SUFFIX, V_SUFFIX = ":lowrank.U", ":lowrank.V"
MAX_RANK = 4096
_CHUNK = 1 << 22  # elements of ε_r formed at once (≈ 16 MiB per float32 temporary)


def factor_names(name: str) -> tuple[str, str]:
    """The names U and V are drawn under."""
    return name + U_SUFFIX, name + V_SUFFIX


def scale(rank: int) -> float:
    """c = float32(1/√r), as a Python float (exact for r = 1, 4, 16, 64, …)."""
    return float(np.float32(1.0 / math.sqrt(rank)))


def check(rank: int, shape: Sequence[int]) -> tuple[int, int]:
    """(m, n) of a matrix perturbed at ``rank``; a ValueError naming the limit otherwise."""
    if len(shape) != 2:
        raise ValueError(f"low-rank noise: a tensor of shape {tuple(shape)} is not a matrix")
    if not 1 <= rank <= MAX_RANK:
        raise ValueError(f"low-rank noise: rank {rank} is outside [1, {MAX_RANK}]")
    return int(shape[0]), int(shape[1])


def factors(
    seed: int, name: str, shape: Sequence[int], rank: int, *, rows: tuple[int, int] | None = None, device: torch.device | str | None = None, scheme: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U[:, i0:i1], V): U's columns for rows i0 … i1 − 1 of W (all rows by default), r × (i1 − i0) and r × n, float32."""
    from corpmerge import noise

    m, n = check(rank, shape)
    i0, i1 = rows if rows is not None else (0, m)
    uname, vname = factor_names(name)
    u = torch.empty(rank, i1 - i0, dtype=torch.float32, device=device)
    v = torch.empty(rank, n, dtype=torch.float32, device=device)
    noise.fill_many([(u[k], seed, uname, k * m + i0) for k in range(rank)] + [(v.view(-1), seed, vname, 0)], scheme)
    return u, v


def product(u: torch.Tensor, v: torch.Tensor, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Uᵀ·V·c with the contract's arithmetic: (rows × cols) float32 from u (r × rows) and v (r × cols)."""
    out = torch.mul(u[0].unsqueeze(1), v[0].unsqueeze(0), out=out)
    if u.shape[0] > 1:
        term = torch.empty_like(out)
        for k in range(1, u.shape[0]):
            torch.mul(u[k].unsqueeze(1), v[k].unsqueeze(0), out=term)
            out.add_(term)
    return out.mul_(c)


def stacked(factors: Sequence[tuple[torch.Tensor, torch.Tensor]], amplitudes: Sequence[float], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Σₖ aₖ·ε_r(sₖ) = B·A, of rank K·r, from each seed's (Uₖ, Vₖ) (``factors``): A = [V₁; …; V_K] (K·r × n) and
    B = [a₁·c·U₁ᵀ | … | a_K·c·U_Kᵀ] (m × K·r), float32 (equal to the sum of ``product``s up to rounding, not bit for bit)."""
    c = scale(rank)
    a = torch.cat([v for _, v in factors])
    b = torch.cat([u.t() * (float(amp) * c) for (u, _), amp in zip(factors, amplitudes)], dim=1)
    return a, b


def block(seed: int, name: str, shape: Sequence[int], rank: int, rows: tuple[int, int], cols: tuple[int, int], *, device=None, scheme: str) -> torch.Tensor:
    """ε_r[i0:i1, j0:j1], float32."""
    u, v = factors(seed, name, shape, rank, rows=rows, device=device, scheme=scheme)
    return product(u, v[:, cols[0] : cols[1]], scale(rank))


def matrix(seed: int, name: str, shape: Sequence[int], rank: int, *, device=None, scheme: str) -> torch.Tensor:
    """The whole ε_r (m × n, float32)."""
    m, n = check(rank, shape)
    return block(seed, name, shape, rank, (0, m), (0, n), device=device, scheme=scheme)


def fill(out: torch.Tensor, seed: int, name: str, offset: int, shape: Sequence[int], rank: int, *, scheme: str) -> torch.Tensor:
    """``out`` (1-D float32) filled with elements offset … offset + len(out) − 1 of ε_r, flat and row-major."""
    m, n = check(rank, shape)
    count = out.numel()
    if offset < 0 or offset + count > m * n:
        raise ValueError(f"low-rank noise: elements [{offset}, {offset + count}) are outside the {m} × {n} matrix '{name}'")
    if count == 0:
        return out
    first, last = offset // n, (offset + count - 1) // n
    step = max(1, _CHUNK // n)
    u_all, v = factors(seed, name, shape, rank, rows=(first, last + 1), device=out.device, scheme=scheme)
    c = scale(rank)
    for r0 in range(first, last + 1, step):
        r1 = min(last + 1, r0 + step)
        values = product(u_all[:, r0 - first : r1 - first], v, c).view(-1)
        lo, hi = max(offset, r0 * n), min(offset + count, r1 * n)
        out[lo - offset : hi - offset].copy_(values[lo - r0 * n : hi - r0 * n])
    return out


def window(seed: int, name: str, shape: Sequence[int], rank: int, start: int, stride: int, rows: int, width: int, *, device=None, scheme: str) -> torch.Tensor:
    """ε_r over ``rows`` rows of ``width`` elements, row i starting at flat element start + i·stride (float32, rows × width):
    one block of U and V where the window is a block of the matrix, else row by row."""
    m, n = check(rank, shape)
    i0, j0 = divmod(start, n)
    if j0 + width <= n and (rows == 1 or stride == n):
        return block(seed, name, shape, rank, (i0, i0 + rows), (j0, j0 + width), device=device, scheme=scheme)
    out = torch.empty(rows, width, dtype=torch.float32, device=device)
    for i in range(rows):
        fill(out[i], seed, name, start + i * stride, shape, rank, scheme=scheme)
    return out
