"""The noise contract, for both schemes; the portable scheme against an independent NumPy reference."""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from corpmerge.errors import CorpmergeError
from corpmerge.noise import DEFAULT_SCHEME, LEGACY_SCHEME, SCHEMES, check_scheme, gaussian, philox
from corpmerge.noise.icdf import KNOTS, ROWS, build, load
from corpmerge.noise.sfc64 import BLOCK

BOTH = pytest.mark.parametrize("scheme", SCHEMES)


# ---- an independent reference of philox4x32-10-icdf-v1: NumPy uint64, element by element (docs/noise.md)
def _philox_words(counter: int, seed: int, h: int) -> list[int]:
    """Random123's Philox4x32-10, in Python integers."""
    m = 0xFFFFFFFF
    c = [counter & m, counter >> 32, h & m, h >> 32]
    k = [seed & m, seed >> 32]
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) & m, (k[1] + 0xBB67AE85) & m]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & m, (p0 >> 32) ^ c[3] ^ k[1], p0 & m]
    return c


def reference(seed: int, name: str, count: int, offset: int = 0) -> np.ndarray:
    table = load()
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    out = np.empty(count, dtype=np.float32)
    for m in range(count):
        i = offset + m
        x = _philox_words(i // 2, seed, h)
        u = x[0] | x[1] << 32 if i % 2 == 0 else x[2] | x[3] << 32
        w = 2**62 - (u & (2**62 - 1))
        k = 62 - (w.bit_length() - 1)
        v = w << k
        j, t = (v >> 52) & 1023, (v >> 28) & (2**24 - 1)
        fixed = int(table[k, j]) - ((int(table[k, j]) - int(table[k, j + 1])) * t >> 24)
        out[m] = np.float32(-fixed if u >> 63 else fixed) * np.float32(2.0**-40)
    return out


def test_philox_known_answers():
    """Random123's kat_vectors for philox4x32 10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        words = philox.philox_torch(*(torch.tensor([c], dtype=torch.int64) for c in counter), *key)
        assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize(
    "seed,name,count,offset",
    [(0, "w", 300, 0), (7, "model.layers.0.mlp.down_proj.weight", 257, 12345), (2**31 - 1, "x", 33, 2**40 + 1), (3 + 2**32, "é/ü", 64, 2**33 - 7)]
    + [(s, f"t{s}", 41, 17 * s) for s in range(1, 13)],
)
def test_the_portable_scheme_equals_the_numpy_reference_bit_for_bit(seed, name, count, offset):
    expected = reference(seed, name, count, offset).view(np.uint32)
    kernel = gaussian(seed, name, (count,), offset=offset).numpy().view(np.uint32)
    out = torch.empty(count)
    torch_ops = philox.draw_torch(out, seed, name, offset).numpy().view(np.uint32)
    assert np.array_equal(kernel, expected) and np.array_equal(torch_ops, expected)


def test_the_deep_tail_and_the_centre_follow_the_table():
    """Uniforms at the ends of the range: w = 1 (x = 0) and w = 1 (the smallest tail mass, |x| ≈ 9.004)."""
    table = torch.from_numpy(load()[:, :KNOTS].reshape(-1).copy())
    diffs = torch.from_numpy((load()[:, :KNOTS] - load()[:, 1:]).reshape(-1).copy())
    lo = torch.tensor([0, 0xFFFFFFFF, 0xFFFFFFFF], dtype=torch.int64)
    hi = torch.tensor([0, 0x3FFFFFFF, 0xBFFFFFFF], dtype=torch.int64)
    fixed = philox._normal_from_words(lo, hi, table, diffs)
    assert fixed.tolist() == [0, int(load()[62, 0]), -int(load()[62, 0])]
    assert 9.0 < load()[62, 0] / 2**40 < 9.01


def test_the_shipped_table_is_its_definition():
    """A sample of rows recomputed from the definition (mpmath, 60 digits): the centre, the middle and the deepest octave."""
    rows = [1, 2, 31, 62]
    assert np.array_equal(build(rows), load()[rows])
    assert load().shape == (ROWS, KNOTS + 1)


@BOTH
def test_slices_equal_whole_tensor(scheme):
    whole = gaussian(7, "layer.weight", (3 * BLOCK + 1234,), scheme=scheme)
    for offset, length in [(0, 10), (1, 9), (BLOCK - 5, 10), (BLOCK, BLOCK), (2 * BLOCK + 17, BLOCK + 100), (3 * BLOCK + 1000, 233)]:
        part = gaussian(7, "layer.weight", (length,), offset=offset, scheme=scheme)
        assert torch.equal(part, whole[offset : offset + length])


@BOTH
def test_shape_is_a_view_of_the_flat_stream(scheme):
    flat = gaussian(3, "w", (600,), scheme=scheme)
    assert torch.equal(gaussian(3, "w", (20, 30), scheme=scheme).flatten(), flat)


@BOTH
def test_pure_function_of_seed_and_name(scheme):
    a = gaussian(11, "a", (5000,), scheme=scheme)
    assert torch.equal(a, gaussian(11, "a", (5000,), scheme=scheme))
    assert not torch.equal(a, gaussian(12, "a", (5000,), scheme=scheme))
    # same shape, different name → independent streams (the anchors' same-shape bug)
    b = gaussian(11, "b", (5000,), scheme=scheme)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.06


def test_the_two_schemes_differ():
    assert not torch.equal(gaussian(1, "w", (64,), scheme=DEFAULT_SCHEME), gaussian(1, "w", (64,), scheme=LEGACY_SCHEME))


@BOTH
def test_seeds_beyond_32_bits_are_distinct(scheme):
    assert not torch.equal(gaussian(1, "w", (64,), scheme=scheme), gaussian(1 + 2**32, "w", (64,), scheme=scheme))


@BOTH
def test_statistics_are_standard_normal(scheme):
    x = gaussian(2024, "stats", (1_000_000,), scheme=scheme).double()
    n = x.numel()
    assert abs(float(x.mean())) < 5 / math.sqrt(n)
    assert abs(float(x.std()) - 1) < 5 * math.sqrt(2 / n)
    # tail mass and symmetry against the normal CDF
    assert abs(float((x.abs() > 1.96).double().mean()) - 0.05) < 0.002
    assert abs(float((x > 0).double().mean()) - 0.5) < 0.002
    assert abs(float((x**4).mean()) - 3.0) < 0.05


@BOTH
def test_same_bits_for_any_thread_count_order_and_chunking(scheme):
    script = (
        "import os, torch, hashlib; torch.set_num_threads({t});"
        "from corpmerge.noise import gaussian, philox;"
        "philox._CHUNK = {chunk};"
        "names=['b','a','c'] if {t}==1 else ['c','a','b'];"
        "d={{n: gaussian(5, n, (9*65536+3,), scheme='{scheme}').numpy().tobytes() for n in names}};"
        "print(hashlib.sha256(b''.join(d[k] for k in sorted(d))).hexdigest())"
    )
    runs = [(1, 1 << 21), (2, 1 << 21), (2, 1000)]  # threads, torch chunk
    digests = set()
    for t, chunk in runs:
        env = {**__import__("os").environ, "NUMBA_NUM_THREADS": str(t)}
        out = subprocess.run([sys.executable, "-c", script.format(t=t, chunk=chunk, scheme=scheme)], capture_output=True, text=True, check=True, env=env)
        digests.add(out.stdout)
    assert len(digests) == 1


def test_the_torch_path_equals_the_cpu_kernel_across_chunks(monkeypatch):
    """The path a GPU takes (torch integer ops, chunk by chunk) against the CPU kernel, on a slice crossing chunk edges."""
    monkeypatch.setattr(philox, "_CHUNK", 1000)
    out = torch.empty(5001)
    assert torch.equal(philox.draw_torch(out, 9, "w", 1999), gaussian(9, "w", (5001,), offset=1999))


def test_the_meta_device_gets_the_shape_only():
    assert gaussian(1, "w", (4, 5), device="meta").shape == (4, 5)


@BOTH
def test_device_argument_copies_the_same_values(scheme):
    cpu = gaussian(1, "w", (100,), scheme=scheme)
    assert torch.equal(gaussian(1, "w", (100,), device="cpu", scheme=scheme), cpu)


def test_scheme_check():
    for scheme in SCHEMES:
        check_scheme(scheme)
    with pytest.raises(CorpmergeError, match="not supported"):
        check_scheme("torch-normal-v0")


def test_negative_seed_rejected():
    with pytest.raises(ValueError):
        gaussian(-1, "w", (3,))
