"""Rank-r noise ε_r = Uᵀ·V·float32(1/√r) (docs/noise.md, "Rank-r noise"): an independent NumPy construction from the
text, windows equal to the whole, the update's arithmetic, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_noise import reference

from corpmerge import noise
from corpmerge.amplitudes import Amplitudes
from corpmerge.noise import lowrank

SCHEME = noise.DEFAULT_SCHEME


def numpy_epsilon(seed: int, name: str, m: int, n: int, r: int) -> np.ndarray:
    """ε_r from docs/noise.md alone: U, V drawn by the NumPy reference of the scheme under the derived names,
    products summed in k order in float32, then × float32(1/√r)."""
    u = reference(seed, name + ":lowrank.U", r * m).reshape(r, m)
    v = reference(seed, name + ":lowrank.V", r * n).reshape(r, n)
    p = (u[0][:, None] * v[0][None, :]).astype(np.float32)
    for k in range(1, r):
        p = (p + (u[k][:, None] * v[k][None, :]).astype(np.float32)).astype(np.float32)
    return (p * np.float32(1.0 / np.sqrt(r))).astype(np.float32)


@pytest.mark.parametrize(
    "seed, name, m, n, r", [(0, "w", 5, 7, 1), (7, "model.layers.0.mlp.up_proj.weight", 33, 17, 4), (2**40 + 9, "x", 9, 64, 3), (3, "y", 12, 5, 16)]
)
def test_epsilon_r_equals_the_numpy_construction_bit_for_bit(seed, name, m, n, r):
    got = lowrank.matrix(seed, name, (m, n), r, scheme=SCHEME).numpy()
    want = numpy_epsilon(seed, name, m, n, r)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want.view(np.int32))


def test_any_window_equals_the_same_window_of_the_whole(monkeypatch):
    m, n, r = 23, 19, 4
    whole = lowrank.matrix(5, "t", (m, n), r, scheme=SCHEME)
    flat = whole.reshape(-1)
    monkeypatch.setattr(lowrank, "_CHUNK", 40)  # several row chunks per fill
    for offset, count in [(0, m * n), (3, 50), (n - 2, 5), (m * n - 7, 7), (100, 0)]:
        out = torch.empty(count)
        lowrank.fill(out, 5, "t", offset, (m, n), r, scheme=SCHEME)
        assert torch.equal(out, flat[offset : offset + count])
    for start, stride, rows, width in [(2 * n + 3, n, 4, 6), (5, n, 1, 30), (7, 2 * n, 3, 4), (n + 1, n + 5, 2, n)]:
        got = lowrank.window(5, "t", (m, n), r, start, stride, rows, width, scheme=SCHEME)
        want = torch.stack([flat[start + i * stride : start + i * stride + width] for i in range(rows)])
        assert torch.equal(got, want)
    out = torch.empty(5)
    with pytest.raises(ValueError, match="outside the 23 × 19 matrix"):
        lowrank.fill(out, 5, "t", m * n - 2, (m, n), r, scheme=SCHEME)


def test_the_factors_of_rank_r_are_the_first_rows_of_a_larger_rank():
    u4, v4 = lowrank.factors(11, "t", (8, 6), 4, scheme=SCHEME)
    u16, v16 = lowrank.factors(11, "t", (8, 6), 16, scheme=SCHEME)
    assert torch.equal(u4, u16[:4]) and torch.equal(v4, v16[:4])


def test_write_update_and_delta_use_the_same_arithmetic():
    """dest = round(θ₀ + Σ aₖ·ε_r(sₖ)) over a window, equal to the writer's Amplitudes.delta then one rounding."""
    m, n, r = 16, 12, 4
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(m, n, generator=g)
    seeds, amps = [3, 9, 27], [0.01, -0.004, 0.0025]
    delta = Amplitudes(np.array(seeds), np.array(amps)).delta("w", torch.Size((m, n)), rank=r)
    for dtype in (torch.float32, torch.bfloat16):
        want = torch.add(theta, delta).to(dtype)
        dest = torch.empty(m, n, dtype=dtype)
        assert noise.write_update(dest, theta, "w", seeds, amps, rank=r, shape=(m, n)) == "torch"
        assert torch.equal(dest.view(torch.int16) if dtype == torch.bfloat16 else dest, want.view(torch.int16) if dtype == torch.bfloat16 else want)
        part = torch.empty(5, 4, dtype=dtype)  # rows 3..7, columns 2..5: a tensor-parallel shard
        noise.write_update(part, theta[3:8, 2:6].contiguous(), "w", seeds, amps, offset=3 * n + 2, row_stride=n, rank=r, shape=(m, n))
        assert torch.equal(part.float(), want[3:8, 2:6].float())
    with pytest.raises(ValueError, match="needs the matrix's shape"):
        noise.write_update(torch.empty(m, n), theta, "w", seeds, amps, rank=r)


def test_rank_r_noise_is_standard_normal_elementwise_and_independent():
    """Over 64 seeds (one matrix's elements share its factors, so its own sample variance moves by ≈ 0.1 at this size):
    mean 0, variance 1, kurtosis 3 + 6/r (a sum of r products of independent N(0, 1)), seeds and tensors uncorrelated."""
    m, n, r = 96, 128, 4
    draws = torch.stack([lowrank.matrix(s, "w", (m, n), r, scheme=SCHEME) for s in range(64)]).double()
    assert abs(float(draws.mean())) < 0.01 and abs(float(draws.var()) - 1) < 0.05
    assert abs(float((draws**4).mean() / draws.var() ** 2) - (3 + 6 / r)) < 0.3
    per_element = draws.var(dim=0)  # each element's variance across seeds
    assert abs(float(per_element.mean()) - 1) < 0.05
    other = lowrank.matrix(0, "w2", (m, n), r, scheme=SCHEME).double()
    assert abs(float((draws[0] * draws[1]).mean())) < 0.05 and abs(float((draws[0] * other).mean())) < 0.05
    sv = torch.linalg.svdvals(draws[0])  # rank r up to float32 rounding
    assert sv[r - 1] > 1.0 and sv[r] < 1e-4 * sv[0]
