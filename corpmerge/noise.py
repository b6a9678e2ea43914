"""Portable seeded Gaussian noise: ε(seed)[name][i] as a pure function of (seed, name, i).

Scheme ``sfc64-zig-b64k-v1``: the flat index space of every tensor is cut into blocks of
65,536 elements. Block ``b`` of tensor ``name`` under ``seed`` is drawn by NumPy's SFC64 bit
generator, seeded through ``SeedSequence([scheme tag, seed, blake2b(name), b])``, with the
float32 ziggurat sampler (``Generator.standard_normal``). So

* any slice can be generated alone (``offset``) and equals the slice of the whole tensor;
* different tensors and seeds get independent 128-bit-keyed streams (no 32-bit seed
  collisions, unlike ``torch.Generator.manual_seed``);
* the bits do not depend on threads, visiting order, device or CPU vector extensions:
  the sampler is scalar integer code. Noise is always drawn on the CPU and copied to the
  target device, so CPU and CUDA runs use identical values;
* blocks are independent, so large tensors are drawn by several threads at once.

``check_scheme`` compares a fixed reference draw against a recorded digest, so a NumPy
release that changed the stream would be caught instead of silently changing models.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from corpmerge.errors import CorpmergeError

SCHEME = "sfc64-zig-b64k-v1"
BLOCK = 1 << 16
_SCHEME_TAG = 0x5F3C_0001
_REFERENCE_DIGEST = "5e0aa0a6c6e085dd"  # blake2b-64 of gaussian(0, "corpmerge.selftest", (4096,))
_PARALLEL_MIN = 4 * BLOCK
NOISE_BATCH = 1 << 25  # float32 values a caller should draw per parallel batch (128 MiB)


@lru_cache(maxsize=65536)
def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest(), "little")


def _draw_block(seed: int, name_key: int, block: int, out: np.ndarray, skip: int) -> None:
    """Write elements [skip, skip + len(out)) of one block into ``out``."""
    gen = np.random.Generator(np.random.SFC64(np.random.SeedSequence([_SCHEME_TAG, seed, name_key, block])))
    if skip:
        gen.standard_normal(skip, dtype=np.float32)  # the ziggurat consumes a variable count
    gen.standard_normal(out=out, dtype=np.float32)


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def _block_jobs(out: np.ndarray, seed: int, name: str, offset: int) -> list[tuple]:
    if seed < 0 or offset < 0:
        raise ValueError("seed and offset must be non-negative")
    key = _name_key(name)
    jobs = []
    pos, end = offset, offset + out.size
    while pos < end:
        block, skip = divmod(pos, BLOCK)
        stop = min(end, (block + 1) * BLOCK)
        jobs.append((seed, key, block, out[pos - offset : stop - offset], skip))
        pos = stop
    return jobs


def _draw_jobs(jobs: list[tuple]) -> None:
    """Draw blocks, on the thread pool when there is enough work to share."""
    if len(jobs) > 1 and sum(job[3].size for job in jobs) >= _PARALLEL_MIN:
        list(_pool().map(lambda job: _draw_block(*job), jobs))
    else:
        for job in jobs:
            _draw_block(*job)


def fill_many(requests: Sequence[tuple[np.ndarray, int, str]]) -> None:
    """Fill several arrays at once: ``(out, seed, name)`` each gets ε(seed)[name][0 : len(out)].

    All blocks of all requests go to the thread pool together, so many small tensors are
    drawn as fast as one large one.
    """
    _draw_jobs([job for out, seed, name in requests for job in _block_jobs(out, seed, name, 0)])


def fill_gaussian(out: np.ndarray, seed: int, name: str, offset: int = 0) -> np.ndarray:
    """Fill a 1-D float32 array with ε(seed)[name][offset : offset + len(out)]."""
    _draw_jobs(_block_jobs(out, seed, name, offset))
    return out


def gaussian(
    seed: int,
    name: str,
    shape: Sequence[int] | torch.Size,
    *,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard-normal float32 noise of ``shape`` for tensor ``name`` under ``seed``.

    Element ``j`` of the result is ε(seed)[name][offset + j] (flat, row-major).
    """
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.float32)
    fill_gaussian(out.numpy(), seed, name, offset)
    out = out.view(*shape)
    return out if device is None else out.to(device)


def reference_digest() -> str:
    """Digest of a fixed reference draw; equal to the recorded one when the scheme reproduces."""
    sample = gaussian(0, "corpmerge.selftest", (4096,))
    return hashlib.blake2b(sample.numpy().tobytes(), digest_size=8).hexdigest()


@lru_cache(maxsize=1)
def check_scheme(requested: str = SCHEME) -> None:
    """Raise a CorpmergeError if ``requested`` is not the scheme this build reproduces."""
    if requested != SCHEME:
        raise CorpmergeError(
            f"noise: scheme '{requested}' is not supported by this corpmerge (it implements '{SCHEME}'); "
            "use the corpmerge version that wrote the recipe or store"
        )
    got = reference_digest()
    if got != _REFERENCE_DIGEST:
        raise CorpmergeError(
            f"noise: scheme '{SCHEME}' does not reproduce with numpy {np.__version__} on this machine "
            f"(reference digest {got} != {_REFERENCE_DIGEST}); install a numpy release that matches"
        )
