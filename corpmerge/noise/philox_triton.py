"""The fused weight change of ``philox4x32-10-icdf-v1`` as one Triton kernel (CUDA; the CPU through Triton's
interpreter, ``TRITON_INTERPRET=1``, which is how the tests check its bits).

``write`` computes, for each element e = offset + i·row_stride + j of a tensor's window,
dest[i, j] = round(θ₀[i, j] + Δ[e]), Δ = ε₁·a₁, then Δ += εₖ·aₖ: the same integers, the same float32
products and sums (fusion into multiply-adds disabled) and the same round-to-nearest-even as ``philox_cpu.write``
and the torch path. One read of θ₀ and one write of the destination per element: the memory-bound limit.
Every integer argument travels in one int64 tensor and no pointer is specialised, so Triton compiles one kernel per
(destination, θ₀) dtype pair, never one per value (a value of 1, a multiple of 16 or one past 2³¹ would each compile anew).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from corpmerge.noise.icdf import FRACTION_BITS, KNOT_BITS, KNOTS

BLOCK = 1024  # counter pairs per program (2,048 elements)
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _normal(lo, hi, table_ptr, diffs_ptr, KNOT_BITS: tl.constexpr, KNOTS: tl.constexpr, SCALE: tl.constexpr):
    """Steps 2–5 of the scheme for 64-bit uniforms given as uint32 words (low, high)."""
    negative = (hi >> 31) != 0
    w = (1 << 62) - (((hi & 0x3FFFFFFF).to(tl.int64) << 32) | lo.to(tl.int64))
    n = tl.zeros_like(w)  # ⌊log₂ w⌋ by binary search: no count-leading-zeros in the interpreter
    n += tl.where((w >> (n + 32)) > 0, 32, 0)
    n += tl.where((w >> (n + 16)) > 0, 16, 0)
    n += tl.where((w >> (n + 8)) > 0, 8, 0)
    n += tl.where((w >> (n + 4)) > 0, 4, 0)
    n += tl.where((w >> (n + 2)) > 0, 2, 0)
    n += tl.where((w >> (n + 1)) > 0, 1, 0)
    k = 62 - n
    v = w << k
    j = (v >> (62 - KNOT_BITS)) & (KNOTS - 1)
    t = (v >> (62 - KNOT_BITS - 24)) & ((1 << 24) - 1)
    index = k * KNOTS + j
    x = tl.load(table_ptr + index) - ((tl.load(diffs_ptr + index) * t) >> 24)
    x = tl.where(negative, -x, x)
    return x.to(tl.float32) * SCALE


@triton.jit
def _load_theta(ptr, mask, KIND: tl.constexpr):
    if KIND == 1:
        bits = tl.load(ptr, mask=mask, other=0).to(tl.uint16, bitcast=True).to(tl.uint32) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr, mask=mask, other=0).to(tl.float32)


@triton.jit
def _store(ptr, value, mask, KIND: tl.constexpr):
    if KIND == 1:  # bfloat16 bits, nearest even; NaN → 0x7FC0 (torch's conversion)
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)
        tl.store(ptr, rounded.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    elif KIND == 2:
        tl.store(ptr, value.to(tl.float16), mask=mask)
    else:
        tl.store(ptr, value, mask=mask)


@triton.jit(do_not_specialize=["dest_ptr", "theta_ptr", "keys_ptr", "amps_ptr", "table_ptr", "diffs_ptr", "args_ptr"])
def _write_kernel(
    dest_ptr, theta_ptr, keys_ptr, amps_ptr, table_ptr, diffs_ptr, args_ptr,
    DEST_KIND: tl.constexpr, THETA_KIND: tl.constexpr, BLOCK: tl.constexpr,
    KNOT_BITS: tl.constexpr, KNOTS: tl.constexpr, SCALE: tl.constexpr,
):  # fmt: skip
    # every integer arrives in one int64 tensor: one compiled kernel per dtype pair, whatever the values
    width = tl.load(args_ptr + 0)
    offset = tl.load(args_ptr + 1)
    row_stride = tl.load(args_ptr + 2)
    dest_rs = tl.load(args_ptr + 3)
    dest_cs = tl.load(args_ptr + 4)
    theta_rs = tl.load(args_ptr + 5)
    theta_cs = tl.load(args_ptr + 6)
    n_seeds = tl.load(args_ptr + 7)
    h0 = tl.load(args_ptr + 8)
    h1 = tl.load(args_ptr + 9)
    chunks_per_row = tl.load(args_ptr + 10)
    pid = tl.program_id(0).to(tl.int64)
    row = pid // chunks_per_row
    start = offset + row * row_stride  # flat index of the row's first element
    pairs = (start >> 1) + (pid % chunks_per_row) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    col0 = 2 * pairs - start
    keep0 = (col0 >= 0) & (col0 < width)
    keep1 = (col0 + 1 >= 0) & (col0 + 1 < width)
    acc0 = tl.zeros((BLOCK,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK,), dtype=tl.float32)
    lo_counter = (pairs & 0xFFFFFFFF).to(tl.uint32)
    hi_counter = (pairs >> 32).to(tl.uint32)
    for s in range(n_seeds):
        k0 = tl.load(keys_ptr + 2 * s).to(tl.uint32)
        k1 = tl.load(keys_ptr + 2 * s + 1).to(tl.uint32)
        c0, c1 = lo_counter, hi_counter
        c2 = tl.zeros_like(lo_counter) + h0.to(tl.uint32)
        c3 = tl.zeros_like(lo_counter) + h1.to(tl.uint32)
        for _ in tl.static_range(10):
            hi0, lo0 = tl.umulhi(c0, 0xD2511F53), c0 * 0xD2511F53
            hi1, lo1 = tl.umulhi(c2, 0xCD9E8D57), c2 * 0xCD9E8D57
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        a = tl.load(amps_ptr + s)
        term0 = _normal(c0, c1, table_ptr, diffs_ptr, KNOT_BITS, KNOTS, SCALE) * a
        term1 = _normal(c2, c3, table_ptr, diffs_ptr, KNOT_BITS, KNOTS, SCALE) * a
        if s == 0:
            acc0, acc1 = term0, term1
        else:
            acc0 = acc0 + term0
            acc1 = acc1 + term1
    theta0 = _load_theta(theta_ptr + row * theta_rs + col0 * theta_cs, keep0, THETA_KIND)
    theta1 = _load_theta(theta_ptr + row * theta_rs + (col0 + 1) * theta_cs, keep1, THETA_KIND)
    if n_seeds > 0:
        theta0 = theta0 + acc0
        theta1 = theta1 + acc1
    _store(dest_ptr + row * dest_rs + col0 * dest_cs, theta0, keep0, DEST_KIND)
    _store(dest_ptr + row * dest_rs + (col0 + 1) * dest_cs, theta1, keep1, DEST_KIND)


def supports(dest: torch.Tensor, theta0: torch.Tensor) -> bool:
    return dest.dtype in _KINDS and theta0.dtype in _KINDS


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def write(
    dest: torch.Tensor, theta0: torch.Tensor, keys: torch.Tensor, amplitudes: torch.Tensor, h: tuple[int, int],
    offset: int, row_stride: int, table: torch.Tensor, diffs: torch.Tensor,
) -> None:  # fmt: skip
    """dest (rows × width, any strides) ← round(θ₀ + Δ) over the window; ``keys``: int64 (n × 2) words, ``amplitudes``:
    float32 (n), ``table``/``diffs``: the scheme's int64 tables, all on dest's device."""
    rows, width = dest.shape
    if rows == 0 or width == 0:
        return
    chunks = triton.cdiv((width >> 1) + 1, BLOCK)
    args = torch.tensor(
        [width, offset, row_stride, dest.stride(0), dest.stride(1), theta0.stride(0), theta0.stride(1), keys.shape[0], h[0], h[1], chunks],
        dtype=torch.int64,
    ).to(dest.device)
    with torch.cuda.device(dest.device) if dest.device.type == "cuda" else contextlib.nullcontext():  # the launch's device
        _write_kernel[(rows * chunks,)](
            _raw(dest), _raw(theta0), keys, amplitudes, table, diffs, args,
            DEST_KIND=_KINDS[dest.dtype], THETA_KIND=_KINDS[theta0.dtype], BLOCK=BLOCK,
            KNOT_BITS=KNOT_BITS, KNOTS=KNOTS, SCALE=2.0**-FRACTION_BITS,
            enable_fp_fusion=False,
        )  # fmt: skip
