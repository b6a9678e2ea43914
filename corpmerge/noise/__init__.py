"""Seeded Gaussian noise: ε(seed)[name][i] is a pure function of (scheme, seed, tensor name, flat index i).

Two schemes, named in every recipe, store and lineage (``noise:``):

* ``philox4x32-10-icdf-v1`` (the default for new recipes; ``philox``): integer-only, so every device draws
  the same bits, and the noise is drawn where the model lives. Updates of several seeds accumulate as
  Δ += round(a·ε) (a product, then a sum).
* ``sfc64-zig-b64k-v1`` (corpmerge ≤ 0.3; ``sfc64``): drawn on the host, copied to the device;
  several seeds accumulate with a fused multiply-add, as it always did.

Either way: any slice can be drawn alone (``offset``) and equals the slice of the whole tensor; the bits
depend on neither the thread count nor the order tensors are visited; different tensors and seeds get
independent streams. ``check_scheme`` compares a fixed reference draw with a recorded digest (on the
scoring device too), so a changed dependency or a device that computes differently is an error, not
a silently different model.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from corpmerge.errors import CorpmergeError
from corpmerge.noise import philox, sfc64

log = logging.getLogger(__name__)

DEFAULT_SCHEME = philox.NAME
LEGACY_SCHEME = sfc64.NAME
SCHEMES = (DEFAULT_SCHEME, LEGACY_SCHEME)
NOISE_BATCH = 1 << 25  # float32 values a caller should draw per batch (128 MiB)
Request = tuple[torch.Tensor, int, str, int]  # (out, seed, name, offset)
_REFERENCE = {DEFAULT_SCHEME: "a46c283f13188496", LEGACY_SCHEME: sfc64.REFERENCE_DIGEST}


@dataclass(frozen=True)
class Scheme:
    """How one scheme draws and combines noise."""

    name: str
    fill_many: Callable[[Sequence[Request]], None]
    accumulate: Callable[[torch.Tensor, torch.Tensor, float], None]
    on_device: bool  # draws on any device with the same bits (else on the host, then copied)


def _philox_fill_many(requests: Sequence[Request]) -> None:
    for out, seed, name, offset in requests:
        if out.device.type == "cpu" and _cpu_kernel() is not None:
            h = philox.name_hash(name)
            _cpu_kernel()(out.numpy(), offset, philox.key(seed), (h & 0xFFFFFFFF, h >> 32), *_cpu_tables())
        else:
            philox.draw_torch(out, seed, name, offset)


@lru_cache(maxsize=1)
def _cpu_kernel() -> Callable | None:
    """The Numba kernel with its thread count set to the cores this rank owns; None without Numba (torch ops then)."""
    try:
        import numba

        from corpmerge.noise import philox_cpu
    except ImportError:
        log.warning("numba is not installed: noise is drawn with torch integer ops on the CPU (same bits, several times slower)")
        return None
    numba.set_num_threads(min(philox.cpu_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_parallel_chunksize(1 << 14)  # pairs per chunk, handed out dynamically: a busy core does not hold up a draw
    return philox_cpu.fill


@lru_cache(maxsize=1)
def _cpu_tables() -> tuple[np.ndarray, np.ndarray]:
    table, diffs = philox.tables(torch.device("cpu"))
    return table.numpy(), diffs.numpy()


_SCHEMES = {
    DEFAULT_SCHEME: Scheme(DEFAULT_SCHEME, _philox_fill_many, philox.accumulate, on_device=True),
    LEGACY_SCHEME: Scheme(LEGACY_SCHEME, sfc64.fill_many, sfc64.accumulate, on_device=False),
}


def scheme(name: str) -> Scheme:
    """The named scheme; a CorpmergeError naming the ones this corpmerge implements otherwise."""
    try:
        return _SCHEMES[name]
    except KeyError:
        raise CorpmergeError(
            f"noise: scheme '{name}' is not supported by this corpmerge (it implements {', '.join(SCHEMES)}); "
            "use the corpmerge version that wrote the recipe or store"
        ) from None


def fill_many(requests: Sequence[Request], scheme_name: str = DEFAULT_SCHEME) -> None:
    """Fill each ``out`` (1-D, contiguous float32, any device) with ε(seed)[name][offset : offset + len(out)]."""
    for _, seed, _, offset in requests:
        if seed < 0 or offset < 0:
            raise ValueError("seed and offset must be non-negative")
    scheme(scheme_name).fill_many(requests)


def fill(out: torch.Tensor, seed: int, name: str, offset: int = 0, scheme_name: str = DEFAULT_SCHEME) -> torch.Tensor:
    """``out`` (1-D float32) filled with ε(seed)[name][offset : offset + len(out)]."""
    fill_many([(out, seed, name, offset)], scheme_name)
    return out


def gaussian(
    seed: int,
    name: str,
    shape: Sequence[int] | torch.Size,
    *,
    offset: int = 0,
    device: torch.device | str | None = None,
    scheme: str = DEFAULT_SCHEME,
) -> torch.Tensor:
    """Standard-normal float32 noise of ``shape``: element j (flat, row-major) is ε(seed)[name][offset + j].
    Drawn on ``device`` (the CPU by default); the legacy scheme draws on the host and copies."""
    out = torch.empty(math.prod(shape), dtype=torch.float32, device=device)
    return fill(out, seed, name, offset, scheme).view(*shape)


def reference_digest(scheme_name: str, device: torch.device | str | None = None) -> str:
    """Digest of a fixed reference draw (4,096 values at offset 0, and 4,096 at offset 2⁴⁰ + 3)."""
    digest = hashlib.blake2b(digest_size=8)
    for offset in (0,) if scheme_name == LEGACY_SCHEME else (0, 2**40 + 3):
        sample = gaussian(0, "corpmerge.selftest", (4096,), offset=offset, device=device, scheme=scheme_name)
        digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=8)
def check_scheme(requested: str = DEFAULT_SCHEME, device: str | None = None) -> None:
    """Raise a CorpmergeError unless this build implements ``requested`` and reproduces its reference draw
    (on the CPU, and on ``device`` when given)."""
    scheme(requested)
    for where in [w for w in dict.fromkeys(["cpu", device or "cpu"]) if w != "meta"]:  # meta tensors hold no bits
        got = reference_digest(requested, where)
        if got != _REFERENCE[requested]:
            raise CorpmergeError(
                f"noise: scheme '{requested}' does not reproduce on {where} with numpy {np.__version__}, torch {torch.__version__} "
                f"(reference digest {got} != {_REFERENCE[requested]}); this is a bug or an incompatible release, please report it"
            )
