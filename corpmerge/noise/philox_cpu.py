"""The CPU kernel of ``philox4x32-10-icdf-v1`` (Numba, parallel over counters): the algorithm of ``philox``,
element by element, in 64-bit integers. Compiled on first use and cached next to this file."""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from corpmerge.noise.icdf import FRACTION_BITS, KNOT_BITS, KNOTS

_U = np.uint64
_M0, _M1, _W0, _W1 = _U(0xD2511F53), _U(0xCD9E8D57), _U(0x9E3779B9), _U(0xBB67AE85)
_LOW, _S32 = _U(0xFFFFFFFF), _U(32)
_SCALE = np.float32(2.0**-FRACTION_BITS)


@numba.njit(inline="always")
def _normal(lo: np.uint64, hi: np.uint64, table: np.ndarray, diffs: np.ndarray) -> np.float32:
    """Steps 2–5 of the scheme for one 64-bit uniform (low and high words)."""
    sign = np.int64(1) - np.int64(2) * np.int64(hi >> _U(31))
    w = np.int64(1 << 62) - np.int64(((hi & _U(0x3FFFFFFF)) << _S32) | lo)
    k = np.int64(leading_zeros(w)) - 1  # LLVM's ctlz: 62 − ⌊log₂ w⌋ for 1 ≤ w ≤ 2⁶² (the torch path finds it by binary search)
    v = w << k
    j = (v >> (62 - KNOT_BITS)) & (KNOTS - 1)
    t = (v >> (62 - KNOT_BITS - 24)) & ((1 << 24) - 1)
    index = k * KNOTS + j
    x = table[index] - ((diffs[index] * t) >> 24)
    return np.float32(sign * x) * _SCALE


@numba.njit(parallel=True, nogil=True, cache=True)
def fill(out: np.ndarray, offset: int, key: tuple[int, int], h: tuple[int, int], table: np.ndarray, diffs: np.ndarray) -> None:
    """out[m] = ε[offset + m] for the key (k0, k1) and the name hash's words (h mod 2³², ⌊h / 2³²⌋)."""
    n = out.size
    if n == 0:
        return
    first = offset >> 1
    pairs = ((offset + n - 1) >> 1) - first + 1
    k0_init, k1_init = _U(key[0]), _U(key[1])
    c2_init, c3_init = _U(h[0]), _U(h[1])
    for q in numba.prange(pairs):
        p = _U(first + q)
        c0, c1, c2, c3 = p & _LOW, p >> _S32, c2_init, c3_init
        k0, k1 = k0_init, k1_init
        for _ in range(10):
            p0 = c0 * _M0
            p1 = c2 * _M1
            c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _LOW, (p0 >> _S32) ^ c3 ^ k1, p0 & _LOW
            k0 = (k0 + _W0) & _LOW  # the bump after the last round is never used
            k1 = (k1 + _W1) & _LOW
        i = 2 * (first + q) - offset
        if i >= 0:
            out[i] = _normal(c0, c1, table, diffs)
        if i + 1 < n:
            out[i + 1] = _normal(c2, c3, table, diffs)
