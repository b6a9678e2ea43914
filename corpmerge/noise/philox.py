"""Scheme ``philox4x32-10-icdf-v1``: counter-based noise that every device draws with the same bits.

Element i of ε(seed)[name] (flat, row-major) is computed from integers alone:

1. Words. Philox4x32-10 (Salmon et al. 2011; Random123's constants and known answers) with key
   (k0, k1) = (seed mod 2³², ⌊seed / 2³²⌋) and counter (c0, c1, c2, c3) = (p mod 2³², ⌊p / 2³²⌋, h mod 2³²,
   ⌊h / 2³²⌋), where p = ⌊i / 2⌋ and h = the first 8 bytes of blake2b(name, digest_size=8), little-endian.
   Its output words (x0, x1, x2, x3) give two 64-bit uniforms: U = x0 + 2³²·x1 for even i, x2 + 2³²·x3 for odd i.
2. Sign and tail mass. s = bit 63 of U; r = U mod 2⁶² (bit 62 is unused); w = 2⁶² − r ∈ [1, 2⁶²], so the
   two-sided tail mass w / 2⁶² is uniform on (0, 1].
3. Octave. n = ⌊log₂ w⌋ (0…62), k = 62 − n, and v = w·2ᵏ ∈ [2⁶², 2⁶³): j = bits 61…52 of v (10 bits),
   t = bits 51…28 of v (24 bits).
4. Quantile. With the table T of ``icdf`` (|x|·2⁴⁰ at the knots of octave k),
   X = T[k, j] − ⌊(T[k, j] − T[k, j + 1])·t / 2²⁴⌋ (an int64; every product < 2⁵⁴), negated when s = 1.
5. Float. ε = float32(X) · 2⁻⁴⁰: the one rounding is int64 → float32 to nearest even, exact through
   float64 as well (|X| < 2⁴⁴ < 2⁵³); the product by 2⁻⁴⁰ is exact.

No floating-point operation other than that conversion is involved, so no libm, fused multiply-add,
vector width or thread count can change a bit, and any slice (offset) is drawn alone. Two paths compute it:
``draw_torch`` (torch integer ops, any device; the reference for CUDA) and, on the CPU, a Numba kernel
(``draw_cpu``, parallel over the cores this process may use). Tests check both against an independent
NumPy implementation.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache

import numpy as np
import torch

from corpmerge.noise.icdf import FRACTION_BITS, KNOT_BITS, KNOTS, load

log = logging.getLogger(__name__)

NAME = "philox4x32-10-icdf-v1"
M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
_LOW32 = 0xFFFFFFFF
_T_BITS = 24
_CHUNK = 1 << 21  # counters per torch chunk (≈ 0.3 GiB of int64 temporaries)


def name_hash(name: str) -> int:
    """h: the tensor name's 64-bit key (blake2b, 8 bytes, little-endian)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def key(seed: int) -> tuple[int, int]:
    """(k0, k1): the seed's low and high 32-bit words (seeds below 2⁶⁴)."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed {seed} is outside [0, 2**64)")
    return seed & _LOW32, seed >> 32


@lru_cache(maxsize=8)
def tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """T and D = T[:, :-1] − T[:, 1:] flattened, on ``device`` (int64)."""
    table = load()
    flat_t = torch.from_numpy(np.ascontiguousarray(table[:, :KNOTS])).reshape(-1).to(device)
    flat_d = torch.from_numpy(np.ascontiguousarray(table[:, :KNOTS] - table[:, 1:])).reshape(-1).to(device)
    return flat_t, flat_d


def philox_torch(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding 32-bit words. The 32×32-bit products are formed in int64:
    two's-complement wrap-around keeps exactly the 64 bits of the product, and ``>> 32 & 0xFFFFFFFF`` reads its high word."""
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & _LOW32, (k1 + W1) & _LOW32
        p0, p1 = c0 * M0, c2 * M1
        hi0, lo0 = (p0 >> 32) & _LOW32, p0 & _LOW32
        hi1, lo1 = (p1 >> 32) & _LOW32, p1 & _LOW32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _normal_from_words(lo: torch.Tensor, hi: torch.Tensor, table: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
    """Steps 2–4: the fixed-point X (int64) from a 64-bit uniform given as its low and high words."""
    negative = (hi >> 31).bool()
    w = (1 << 62) - (((hi & 0x3FFFFFFF) << 32) | lo)
    n = torch.zeros_like(w)
    for step in (32, 16, 8, 4, 2, 1):
        n += step * ((w >> (n + step)) > 0)
    k = 62 - n
    v = w << k
    j = (v >> (62 - KNOT_BITS)) & (KNOTS - 1)
    t = (v >> (62 - KNOT_BITS - _T_BITS)) & ((1 << _T_BITS) - 1)
    index = k * KNOTS + j
    x = table[index] - ((diffs[index] * t) >> _T_BITS)
    return torch.where(negative, -x, x)


def draw_torch(out: torch.Tensor, seed: int, name: str, offset: int = 0) -> torch.Tensor:
    """Fill ``out`` (1-D, contiguous float32, any device) with ε[offset : offset + len(out)], in chunks, with torch ops."""
    device, numel = out.device, out.numel()
    table, diffs = tables(device)
    (k0, k1), h = key(seed), name_hash(name)
    first, last = offset >> 1, (offset + numel - 1) >> 1  # counters (pairs) covering the slice
    for lo in range(first, last + 1, _CHUNK):
        hi = min(last + 1, lo + _CHUNK)
        pairs = torch.arange(lo, hi, dtype=torch.int64, device=device)
        c0, c1 = pairs & _LOW32, pairs >> 32
        c2, c3 = torch.full_like(pairs, h & _LOW32), torch.full_like(pairs, h >> 32)
        x0, x1, x2, x3 = philox_torch(c0, c1, c2, c3, k0, k1)
        values = torch.stack([_normal_from_words(x0, x1, table, diffs), _normal_from_words(x2, x3, table, diffs)], dim=1).reshape(-1)
        start = max(offset, 2 * lo) - 2 * lo  # drop the even element before an odd offset
        stop = min(offset + numel, 2 * hi) - 2 * lo
        into = out[max(offset, 2 * lo) - offset : min(offset + numel, 2 * hi) - offset]
        into.copy_(values[start:stop])  # int64 → float32, rounded to nearest even
        into.mul_(2.0**-FRACTION_BITS)
    return out


def accumulate(acc: torch.Tensor, noise: torch.Tensor, amplitude: float) -> None:
    """acc += amplitude·noise as two correctly rounded operations (a product, then a sum; never a fused
    multiply-add), so CPU and CUDA agree."""
    acc.add_(torch.mul(noise, amplitude))


def cpu_threads() -> int:
    """Threads for drawing noise on the CPU: torch's thread count (OMP_NUM_THREADS when set, which Ray sets to a
    worker's CPUs; else the cores)."""
    return max(1, torch.get_num_threads())
