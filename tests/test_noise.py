import math
import subprocess
import sys

import pytest
import torch

from corpmerge.errors import CorpmergeError
from corpmerge.noise import BLOCK, SCHEME, check_scheme, gaussian


def test_slices_equal_whole_tensor():
    whole = gaussian(7, "layer.weight", (3 * BLOCK + 1234,))
    for offset, length in [(0, 10), (BLOCK - 5, 10), (BLOCK, BLOCK), (2 * BLOCK + 17, BLOCK + 100), (3 * BLOCK + 1000, 234)]:
        part = gaussian(7, "layer.weight", (length,), offset=offset)
        assert torch.equal(part, whole[offset : offset + length])


def test_shape_is_a_view_of_the_flat_stream():
    flat = gaussian(3, "w", (600,))
    assert torch.equal(gaussian(3, "w", (20, 30)).flatten(), flat)


def test_pure_function_of_seed_and_name():
    a = gaussian(11, "a", (5000,))
    assert torch.equal(a, gaussian(11, "a", (5000,)))
    assert not torch.equal(a, gaussian(12, "a", (5000,)))
    # same shape, different name → independent streams (the anchors' same-shape bug)
    b = gaussian(11, "b", (5000,))
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.06


def test_seeds_beyond_32_bits_are_distinct():
    assert not torch.equal(gaussian(1, "w", (64,)), gaussian(1 + 2**32, "w", (64,)))


def test_statistics_are_standard_normal():
    x = gaussian(2024, "stats", (1_000_000,)).double()
    n = x.numel()
    assert abs(float(x.mean())) < 5 / math.sqrt(n)
    assert abs(float(x.std()) - 1) < 5 * math.sqrt(2 / n)
    # tail mass and symmetry against the normal CDF
    assert abs(float((x.abs() > 1.96).double().mean()) - 0.05) < 0.002
    assert abs(float((x > 0).double().mean()) - 0.5) < 0.002
    assert abs(float((x**4).mean()) - 3.0) < 0.05


def test_same_bits_for_any_thread_count_and_order():
    script = (
        "import torch, hashlib; torch.set_num_threads({t});"
        "from corpmerge.noise import gaussian;"
        "names=['b','a','c'] if {t}==1 else ['c','a','b'];"
        "d={{n: gaussian(5, n, (9*65536+3,)).numpy().tobytes() for n in names}};"
        "print(hashlib.sha256(b''.join(d[k] for k in sorted(d))).hexdigest())"
    )
    digests = {subprocess.run([sys.executable, "-c", script.format(t=t)], capture_output=True, text=True, check=True).stdout for t in (1, 2)}
    assert len(digests) == 1


def test_device_argument_copies_the_same_values():
    cpu = gaussian(1, "w", (100,))
    assert torch.equal(gaussian(1, "w", (100,), device="cpu"), cpu)


def test_scheme_check():
    check_scheme(SCHEME)
    with pytest.raises(CorpmergeError, match="not supported"):
        check_scheme("torch-normal-v0")


def test_negative_seed_rejected():
    with pytest.raises(ValueError):
        gaussian(-1, "w", (3,))
