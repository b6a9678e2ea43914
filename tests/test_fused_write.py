"""The fused weight change ``noise.write_update``: dest ← round(θ₀ + Σ aₖ·ε(sₖ)) over any window of a tensor, in one pass.

Every path (the Numba kernel, the Triton kernel through its interpreter, torch ops) against an independent NumPy
construction from docs/noise.md, bit for bit: float32/bfloat16/float16, no seed, one and several seeds, odd sizes,
offsets, windows with a row stride; a windowed write equals the same window of the whole; the API's edges raise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_noise import reference

from corpmerge import noise
from corpmerge.noise import philox

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CASES = [  # (shape, offset, row_stride)
    ((37,), 0, None),
    ((37,), 5, None),
    ((1,), 2**62 + 3, None),
    ((13, 9), 0, None),
    ((13, 9), 3, 20),
    ((7, 5), 2**40 + 1001, 31),
    ((4, 1), 9, 9),
]
UPDATES = [([], []), ([3], [1e-3]), ([3, 2**40 + 7, 2**64 - 1], [1e-3, -2.5e-3, 0.7])]


def expected(theta: torch.Tensor, dest_dtype: torch.dtype, name: str, seeds: list[int], amps: list[float], offset: int, stride: int | None) -> torch.Tensor:
    """NumPy: Δ = fl(ε₁·a₁) + fl(ε₂·a₂) + … in float32 (aₖ rounded to float32), θ₀ + Δ in float32, then one rounding
    (torch's conversion, nearest even) — each element's noise from test_noise's element-by-element reference."""
    t2 = theta.reshape(1, -1) if theta.dim() == 1 else theta
    rows, width = t2.shape
    stride = width if stride is None else stride
    out = t2.to(torch.float32).numpy().copy()
    for i in range(rows):
        acc = None
        for seed, amp in zip(seeds, amps):
            term = (reference(seed, name, width, offset + i * stride) * np.float32(amp)).astype(np.float32)
            acc = term if acc is None else (acc + term).astype(np.float32)
        if acc is not None:
            out[i] = (out[i] + acc).astype(np.float32)
    return torch.from_numpy(out).to(dest_dtype).reshape(theta.shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("dest_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("theta_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seeds,amps", UPDATES)
def test_the_cpu_paths_equal_the_numpy_construction(dest_dtype, theta_dtype, seeds, amps):
    torch.manual_seed(len(seeds))
    for shape, offset, stride in CASES:
        theta = torch.randn(shape).to(DTYPES[theta_dtype])
        dest = torch.full(shape, float("nan"), dtype=DTYPES[dest_dtype])
        path = noise.write_update(dest, theta, "w.x", seeds, amps, offset=offset, row_stride=stride)
        assert path == ("copy" if not seeds else "torch" if dest_dtype == "float16" else "numba")
        want = expected(theta, DTYPES[dest_dtype], "w.x", seeds, amps, offset, stride)
        assert same_bits(dest, want), (shape, offset, stride)


def test_a_window_is_the_same_window_of_the_whole_tensor():
    theta = torch.randn(24, 40).to(torch.bfloat16)
    whole = torch.empty_like(theta)
    noise.write_update(whole, theta, "model.layers.0.mlp.up_proj.weight", [5, 6], [2e-3, -1e-3])
    fused = torch.empty(2, 24, 40, dtype=torch.bfloat16)  # a row window (a column-parallel shard of a fused layout) and a column window
    noise.write_update(fused[0, 8:16], theta[8:16], "model.layers.0.mlp.up_proj.weight", [5, 6], [2e-3, -1e-3], offset=8 * 40)
    noise.write_update(fused[1, :, 13:29], theta[:, 13:29], "model.layers.0.mlp.up_proj.weight", [5, 6], [2e-3, -1e-3], offset=13, row_stride=40)
    assert same_bits(fused[0, 8:16], whole[8:16]) and same_bits(fused[1, :, 13:29], whole[:, 13:29])
    assert same_bits(
        whole[3],
        torch.empty(40, dtype=torch.bfloat16).copy_(expected(theta[3], torch.bfloat16, "model.layers.0.mlp.up_proj.weight", [5, 6], [2e-3, -1e-3], 120, None)),
    )


def test_the_torch_path_is_the_same_bits_as_the_kernel(monkeypatch):
    theta = torch.randn(9, 33)
    kernel, ops = torch.empty_like(theta), torch.empty_like(theta)
    noise.write_update(kernel[:, 2:30], theta[:, 2:30], "b", [1, 2], [0.5, 0.25], offset=7, row_stride=33)
    monkeypatch.setattr(noise, "_fused_path", lambda dest, theta0: "torch")
    assert noise.write_update(ops[:, 2:30], theta[:, 2:30], "b", [1, 2], [0.5, 0.25], offset=7, row_stride=33) == "torch"
    assert same_bits(kernel[:, 2:30], ops[:, 2:30])


_TRITON_SCRIPT = """
import json, sys, numpy as np, torch
from corpmerge import noise
from corpmerge.noise import philox, philox_triton
cases = json.loads(sys.argv[1])
out = []
for dest_dtype, theta_dtype, seeds, amps, shape, offset, stride in cases:
    g = torch.Generator().manual_seed(len(out))
    theta = torch.randn(shape, generator=g).to(getattr(torch, theta_dtype))
    dest = torch.full(shape, float("nan"), dtype=getattr(torch, dest_dtype))
    d2, t2 = (dest.view(1, -1), theta.view(1, -1)) if dest.dim() == 1 else (dest, theta)
    keys = torch.tensor([philox.key(s) for s in seeds], dtype=torch.int64).reshape(-1, 2)
    h = philox.name_hash("w.x")
    amps32 = torch.tensor(amps, dtype=torch.float64).to(torch.float32)
    philox_triton.write(d2, t2, keys, amps32, (h & 0xFFFFFFFF, h >> 32), offset, stride or d2.shape[1], *philox.tables(torch.device("cpu")))
    out.append([theta.view(-1).view(torch.uint8).tolist(), dest.view(-1).view(torch.uint8).tolist()])
print(json.dumps(out))
"""


def test_the_triton_kernel_under_its_interpreter_equals_the_numpy_construction():
    pytest.importorskip("triton")
    cases = []
    for k, (dest_dtype, theta_dtype) in enumerate(
        [("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float32"), ("bfloat16", "float32"), ("float32", "float16")]
    ):
        for j, (shape, offset, stride) in enumerate(CASES):
            seeds, amps = UPDATES[(k + j) % len(UPDATES)]
            cases.append([dest_dtype, theta_dtype, seeds, amps, list(shape), offset, stride])
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for (dest_dtype, theta_dtype, seeds, amps, shape, offset, stride), (theta_bytes, dest_bytes) in zip(cases, json.loads(run.stdout)):
        theta = torch.tensor(theta_bytes, dtype=torch.uint8).view(DTYPES[theta_dtype]).reshape(shape)
        dest = torch.tensor(dest_bytes, dtype=torch.uint8).view(DTYPES[dest_dtype]).reshape(shape)
        assert same_bits(dest, expected(theta, DTYPES[dest_dtype], "w.x", seeds, amps, offset, stride)), (dest_dtype, theta_dtype, seeds, shape, offset, stride)


def test_the_api_edges_raise_and_name_the_limit():
    with pytest.raises(ValueError, match=r"2\*\*63"):
        noise.gaussian(1, "w", (20,), offset=2**63 - 10)
    with pytest.raises(ValueError, match=r"2\*\*63"):
        noise.gaussian(1, "w", (20,), offset=2**63)
    with pytest.raises(ValueError, match=r"2\*\*63"):
        noise.gaussian(1, "w", (2,), offset=-1)
    assert noise.gaussian(1, "w", (10,), offset=2**63 - 10).shape == (10,)  # the last ten elements exist
    with pytest.raises(ValueError, match=r"2\*\*64"):
        noise.gaussian(2**64, "w", (2,))
    theta = torch.zeros(4, 8)
    with pytest.raises(ValueError, match=r"2\*\*63"):
        noise.write_update(torch.empty(4, 8), theta, "w", [1], [1.0], offset=2**63 - 20, row_stride=8)
    with pytest.raises(ValueError, match="must match"):
        noise.write_update(torch.empty(4, 7), theta, "w", [1], [1.0])
    with pytest.raises(ValueError, match="amplitudes"):
        noise.write_update(torch.empty(4, 8), theta, "w", [1, 2], [1.0])


def test_a_negative_row_stride_is_refused():
    with pytest.raises(ValueError, match="row_stride -1 is negative"):
        noise.write_update(torch.empty(3, 4), torch.zeros(3, 4), "x", [1], [1.0], offset=1, row_stride=-1)


def test_a_float64_theta0_is_rounded_to_float32_first_as_before():
    theta = torch.randn(5, 7, dtype=torch.float64)
    dest = torch.empty(5, 7)
    assert noise.write_update(dest, theta, "d", [4], [3e-3]) == "torch"
    assert same_bits(dest, expected(theta.to(torch.float32), torch.float32, "d", [4], [3e-3], 0, None))


def test_the_torch_path_cuts_a_long_row_into_blocks(monkeypatch):
    theta = torch.randn(1000).to(torch.bfloat16)
    whole = torch.empty_like(theta)
    noise.write_update(whole, theta, "long", [8, 9], [1e-3, 2e-3])
    monkeypatch.setattr(noise, "_WINDOW_CHUNK", 64)
    monkeypatch.setattr(noise, "_fused_path", lambda dest, theta0: "torch")
    blocks = torch.empty_like(theta)
    noise.write_update(blocks, theta, "long", [8, 9], [1e-3, 2e-3])
    assert same_bits(blocks, whole)


def test_the_cuda_kernel_compiles_without_fused_multiply_adds():
    """Triton's compiler for sm_90 (no GPU needed): the PTX of every dtype pair has no fma and no flush-to-zero, and
    converts int64 → float32 to nearest even, as the contract's arithmetic requires."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from corpmerge.noise import philox_triton
    from corpmerge.noise.icdf import FRACTION_BITS, KNOT_BITS, KNOTS

    pointers = {0: "*fp32", 1: "*i16", 2: "*fp16"}
    for dest_kind, theta_kind in [(1, 1), (0, 2), (2, 0)]:
        signature = {"dest_ptr": pointers[dest_kind], "theta_ptr": pointers[theta_kind], "keys_ptr": "*i64", "amps_ptr": "*fp32"}
        signature |= {"table_ptr": "*i64", "diffs_ptr": "*i64", "args_ptr": "*i64"}
        constants = {"DEST_KIND": dest_kind, "THETA_KIND": theta_kind, "BLOCK": philox_triton.BLOCK, "KNOT_BITS": KNOT_BITS, "KNOTS": KNOTS}
        constants["SCALE"] = 2.0**-FRACTION_BITS
        signature |= {name: "constexpr" for name in constants}
        source = ASTSource(philox_triton._write_kernel, signature, constants)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"]
        assert "fma." not in ptx and ".ftz" not in ptx and "cvt.rn.f32.s64" in ptx, (dest_kind, theta_kind)


def test_the_last_elements_of_the_index_range_follow_the_reference():
    got = noise.gaussian(7, "edge", (10,), offset=2**63 - 10).numpy()
    assert np.array_equal(got.view(np.uint32), reference(7, "edge", 10, 2**63 - 10).view(np.uint32))
    assert philox.key(2**64 - 1) == (0xFFFFFFFF, 0xFFFFFFFF)
