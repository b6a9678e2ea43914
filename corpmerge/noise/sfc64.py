"""Scheme ``sfc64-zig-b64k-v1`` (corpmerge ≤ 0.3's only scheme; still selectable with ``noise:``).

The flat index space of every tensor is cut into blocks of 65,536 elements. Block ``b`` of tensor
``name`` under ``seed`` is drawn by NumPy's SFC64 bit generator, seeded through
``SeedSequence([0x5F3C0001, seed, blake2b-128(name), b])``, with the float32 ziggurat sampler
(``Generator.standard_normal``). Any slice is drawn by skipping into its first block (the ziggurat
consumes a variable count); blocks are independent, so large tensors are drawn by several threads.
The sampler is scalar host code: noise is drawn on the CPU and copied to the device. Updates of
several seeds accumulate as Δ += a·ε with torch's ``add(alpha=)`` on the CPU (one fused multiply-add),
the arithmetic corpmerge ≤ 0.3 wrote, so its lineages rebuild the same bits.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from corpmerge.noise.philox import cpu_threads

NAME = "sfc64-zig-b64k-v1"
BLOCK = 1 << 16
_SCHEME_TAG = 0x5F3C_0001
REFERENCE_DIGEST = "5e0aa0a6c6e085dd"  # blake2b-64 of ε(0)["corpmerge.selftest"][0:4096]
_PARALLEL_MIN = 4 * BLOCK


@lru_cache(maxsize=65536)
def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest(), "little")


def _draw_block(seed: int, name_key: int, block: int, out: np.ndarray, skip: int) -> None:
    """Write elements [skip, skip + len(out)) of one block into ``out``."""
    gen = np.random.Generator(np.random.SFC64(np.random.SeedSequence([_SCHEME_TAG, seed, name_key, block])))
    if skip:
        gen.standard_normal(skip, dtype=np.float32)
    gen.standard_normal(out=out, dtype=np.float32)


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=cpu_threads())


def _block_jobs(out: np.ndarray, seed: int, name: str, offset: int) -> list[tuple]:
    key = _name_key(name)
    jobs = []
    pos, end = offset, offset + out.size
    while pos < end:
        block, skip = divmod(pos, BLOCK)
        stop = min(end, (block + 1) * BLOCK)
        jobs.append((seed, key, block, out[pos - offset : stop - offset], skip))
        pos = stop
    return jobs


def fill_many(requests: Sequence[tuple[torch.Tensor, int, str, int]]) -> None:
    """Fill each ``out`` (1-D float32) with ε(seed)[name][offset : offset + len(out)]; all blocks of all
    requests go to the thread pool together. Tensors off the CPU are drawn on the host and copied."""
    jobs, copies = [], []
    for out, seed, name, offset in requests:
        host = out if out.device.type == "cpu" else torch.empty(out.numel(), dtype=torch.float32)
        if host is not out:
            copies.append((out, host))
        jobs.extend(_block_jobs(host.numpy(), seed, name, offset))
    if len(jobs) > 1 and sum(job[3].size for job in jobs) >= _PARALLEL_MIN:
        list(_pool().map(lambda job: _draw_block(*job), jobs))
    else:
        for job in jobs:
            _draw_block(*job)
    for out, host in copies:
        out.copy_(host)


def accumulate(acc: torch.Tensor, noise: torch.Tensor, amplitude: float) -> None:
    """acc += amplitude·noise, fused (torch's CPU ``add(alpha=)``), as corpmerge ≤ 0.3 computed it."""
    acc.add_(noise, alpha=amplitude)
