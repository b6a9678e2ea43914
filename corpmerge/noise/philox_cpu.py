"""The CPU kernels of ``philox4x32-10-icdf-v1`` (Numba, parallel over counters): the algorithm of ``philox``,
element by element, in 64-bit integers — ``fill`` draws ε, ``write`` forms θ₀ + Σ aₖ·ε(sₖ) and rounds it into
the destination in one pass. Compiled on first use and cached next to this file."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvmir
from numba.cpython.unsafe.numbers import leading_zeros
from numba.extending import intrinsic

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


@numba.njit(inline="always")
def _philox(p: np.uint64, k0: np.uint64, k1: np.uint64, c2: np.uint64, c3: np.uint64) -> tuple:
    """Philox4x32-10 of counter (p mod 2³², ⌊p / 2³²⌋, c2, c3) under key (k0, k1): four 32-bit words in uint64."""
    c0, c1 = p & _LOW, p >> _S32
    for _ in range(10):
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _LOW, (p0 >> _S32) ^ c3 ^ k1, p0 & _LOW
        k0 = (k0 + _W0) & _LOW  # the bump after the last round is never used
        k1 = (k1 + _W1) & _LOW
    return c0, c1, c2, c3


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
        c0, c1, c2, c3 = _philox(_U(first + q), k0_init, k1_init, c2_init, c3_init)
        i = 2 * (first + q) - offset
        if i >= 0:
            out[i] = _normal(c0, c1, table, diffs)
        if i + 1 < n:
            out[i + 1] = _normal(c2, c3, table, diffs)


@intrinsic
def _f32_bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The IEEE bits of a float32 (an LLVM bitcast)."""
    if x != numba.types.float32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], llvmir.IntType(32))

    return numba.types.uint32(numba.types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):  # type: ignore[no-untyped-def]
    """The float32 whose IEEE bits are ``x`` (an LLVM bitcast)."""
    if x != numba.types.uint32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], llvmir.FloatType())

    return numba.types.float32(numba.types.uint32), codegen


@numba.njit(inline="always")
def _to_bf16_bits(value: np.float32) -> np.int16:
    """float32 → bfloat16 bits, rounded to nearest even; every NaN becomes 0x7FC0 (torch's conversion)."""
    if value != value:
        return np.int16(0x7FC0)
    bits = _f32_bits(value)
    return np.int16(np.uint32(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@numba.njit(inline="always")
def _theta(theta: np.ndarray, i: int, j: int, bf16: bool) -> np.float32:
    """θ₀[i, j] as float32 (exact: bfloat16 bits are the float32's high half)."""
    if bf16:
        return _bits_f32(np.uint32(np.uint32(np.uint16(theta[i, j])) << np.uint32(16)))
    return np.float32(theta[i, j])


@numba.njit(inline="always")
def _store(dest: np.ndarray, i: int, j: int, value: np.float32, bf16: bool) -> None:
    if bf16:
        dest[i, j] = _to_bf16_bits(value)
    else:
        dest[i, j] = value


@numba.njit(parallel=True, nogil=True, cache=True)
def write(
    dest: np.ndarray,
    dest_bf16: bool,
    theta: np.ndarray,
    theta_bf16: bool,
    offset: int,
    row_stride: int,
    keys: np.ndarray,
    amplitudes: np.ndarray,
    h: tuple[int, int],
    table: np.ndarray,
    diffs: np.ndarray,
) -> None:
    """dest[i, j] = round(θ₀[i, j] + Δ[i, j]) for element e = offset + i·row_stride + j of the tensor, in one pass.

    Δ = ε₁·a₁, then Δ += εₖ·aₖ (each product and sum rounded to float32, no fused multiply-add), θ₀ + Δ in
    float32, rounded once to the destination (float32, or bfloat16 bits in an int16 array). ``keys``: the
    seeds' (k0, k1) words (n × 2 uint64); ``amplitudes``: float32. No seeds: dest = round(θ₀) (no sum: −0 stays −0).
    Parallel over (row, counter pair); each pair's two elements share one Philox call per seed."""
    rows, width = dest.shape
    if rows == 0 or width == 0:
        return
    per_row = (width >> 1) + 1  # counters a row of ``width`` elements can touch
    c2_init, c3_init = _U(h[0]), _U(h[1])
    seeds = keys.shape[0]
    for q in numba.prange(rows * per_row):
        i = q // per_row
        start = offset + i * row_stride
        p_int = (start >> 1) + q % per_row
        e = 2 * p_int - start  # column of the pair's even element
        if e >= width:
            continue
        acc0 = np.float32(0.0)
        acc1 = np.float32(0.0)
        p = _U(p_int)
        for s in range(seeds):
            c0, c1, c2, c3 = _philox(p, keys[s, 0], keys[s, 1], c2_init, c3_init)
            a = amplitudes[s]
            term0 = _normal(c0, c1, table, diffs) * a
            term1 = _normal(c2, c3, table, diffs) * a
            if s == 0:
                acc0, acc1 = term0, term1
            else:
                acc0 = acc0 + term0
                acc1 = acc1 + term1
        if e >= 0:
            value = _theta(theta, i, e, theta_bf16)
            _store(dest, i, e, value + acc0 if seeds else value, dest_bf16)
        if e + 1 < width:
            value = _theta(theta, i, e + 1, theta_bf16)
            _store(dest, i, e + 1, value + acc1 if seeds else value, dest_bf16)


@numba.njit(inline="always")
def _theta1(theta: np.ndarray, i: int, bf16: bool) -> np.float32:
    if bf16:
        return _bits_f32(np.uint32(np.uint32(np.uint16(theta[i])) << np.uint32(16)))
    return np.float32(theta[i])


@numba.njit(inline="always")
def _store1(dest: np.ndarray, i: int, value: np.float32, bf16: bool) -> None:
    if bf16:
        dest[i] = _to_bf16_bits(value)
    else:
        dest[i] = value


@numba.njit(parallel=True, nogil=True, cache=True)
def write_one(
    dest: np.ndarray,
    dest_bf16: bool,
    theta: np.ndarray,
    theta_bf16: bool,
    offset: int,
    key: tuple[int, int],
    amplitude: np.float32,
    h: tuple[int, int],
    table: np.ndarray,
    diffs: np.ndarray,
) -> None:
    """``write`` for one seed and a contiguous range (dest[m] is element offset + m): a population entry over a whole
    tensor, the hot path. The loop of ``fill`` with θ₀ added, which LLVM vectorises as it does ``fill`` (≈ 1.5× faster
    than the general kernel here); the same bits."""
    n = dest.size
    if n == 0:
        return
    first = offset >> 1
    pairs = ((offset + n - 1) >> 1) - first + 1
    k0_init, k1_init = _U(key[0]), _U(key[1])
    c2_init, c3_init = _U(h[0]), _U(h[1])
    for q in numba.prange(pairs):
        c0, c1, c2, c3 = _philox(_U(first + q), k0_init, k1_init, c2_init, c3_init)
        i = 2 * (first + q) - offset
        if i >= 0:
            _store1(dest, i, _theta1(theta, i, theta_bf16) + _normal(c0, c1, table, diffs) * amplitude, dest_bf16)
        if i + 1 < n:
            _store1(dest, i + 1, _theta1(theta, i + 1, theta_bf16) + _normal(c2, c3, table, diffs) * amplitude, dest_bf16)
