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
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from corpmerge.errors import CorpmergeError
from corpmerge.noise import lowrank, philox, sfc64

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
            _numba_threads()
            h = philox.name_hash(name)
            _cpu_kernel()(out.numpy(), offset, philox.key(seed), (h & 0xFFFFFFFF, h >> 32), *_cpu_tables())
        else:
            philox.draw_torch(out, seed, name, offset)


@lru_cache(maxsize=1)
def _cpu_kernel() -> Callable | None:
    """The Numba kernel; None without Numba (torch ops then)."""
    try:
        from corpmerge.noise import philox_cpu
    except ImportError:
        log.warning("numba is not installed: noise is drawn with torch integer ops on the CPU (same bits, several times slower)")
        return None
    return philox_cpu.fill


def _numba_threads() -> None:
    """Numba's thread count and chunk size are per calling thread: set them in every thread that launches a kernel
    (the cores this rank owns; pairs handed out 2¹⁴ at a time, so a busy core does not hold up a draw)."""
    import numba

    numba.set_num_threads(min(philox.cpu_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_parallel_chunksize(1 << 14)


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


def fill_many(
    requests: Sequence[Request], scheme_name: str = DEFAULT_SCHEME, *, rank: int | None = None, shapes: Mapping[str, Sequence[int]] | None = None
) -> None:
    """Fill each ``out`` (1-D, contiguous float32, any device) with ε(seed)[name][offset : offset + len(out)];
    with ``rank``, ε_r of the matrix ``name`` of shape ``shapes[name]`` (``lowrank``)."""
    for out, seed, _, offset in requests:
        philox.key(seed)  # a ValueError outside [0, 2⁶⁴)
        check_range(offset, out.numel())
    if rank is None:
        scheme(scheme_name).fill_many(requests)
        return
    for out, seed, name, offset in requests:
        lowrank.fill(out, seed, name, offset, (shapes or {})[name], rank, scheme=scheme_name)


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


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BOUND = 10.0  # every |ε| either scheme draws stays below it (philox: at most 9.0044; P(|N(0,1)| > 10) ≈ 1.5·10⁻²³)
MAX_INDEX = 2**63  # flat indices of a tensor's noise lie in [0, 2⁶³)


def check_range(offset: int, count: int) -> None:
    """A ValueError naming the limit unless elements offset … offset + count − 1 lie in [0, 2⁶³)."""
    if offset < 0 or count < 0 or offset + count > MAX_INDEX:
        raise ValueError(f"noise: elements [{offset}, {offset + count}) are outside the flat index range [0, 2**63)")


def write_update(
    dest: torch.Tensor,
    theta0: torch.Tensor,
    name: str,
    seeds: Sequence[int],
    amplitudes: Sequence[float],
    *,
    offset: int = 0,
    row_stride: int | None = None,
    scheme_name: str = DEFAULT_SCHEME,
    rank: int | None = None,
    shape: Sequence[int] | None = None,
) -> str:
    """dest ← round(θ₀ + Δ) over a window of tensor ``name``, Δ = Σₖ aₖ·ε(sₖ)[name] with ``Amplitudes.delta``'s arithmetic
    (ε₁·a₁, then += εₖ·aₖ; aₖ rounded to float32 first, as torch's product with a scalar does), θ₀ + Δ in float32,
    rounded once to dest's dtype (nearest even). No seeds: dest = θ₀ rounded to dest's dtype.

    ``dest`` and ``theta0`` have one shape, 1-D or 2-D, any strides, on one device: dest[j] is element offset + j of the
    flat tensor, dest[i, j] element offset + i·row_stride + j (row_stride: the row length by default), so a shard or
    a slice of a fused layout is written in place. With ``rank``, ε is the rank-r noise ε_r of the matrix ``name`` of
    ``shape`` (``lowrank``; formed with torch operations). Returns the path taken: "numba", "triton", "torch", or "copy"
    (no seeds)."""
    dest, theta0 = dest.detach(), theta0.detach()
    if dest.shape != theta0.shape or dest.dim() not in (1, 2) or dest.device != theta0.device:
        raise ValueError(f"write_update: dest {tuple(dest.shape)} on {dest.device} and θ₀ {tuple(theta0.shape)} on {theta0.device} must match, 1-D or 2-D")
    if not dest.is_floating_point() or not theta0.is_floating_point() or len(seeds) != len(amplitudes):
        raise ValueError(f"write_update: dtypes {dest.dtype}/{theta0.dtype} (floating point) or {len(seeds)} seeds for {len(amplitudes)} amplitudes")
    dest2, theta2 = (dest.unsqueeze(0), theta0.unsqueeze(0)) if dest.dim() == 1 else (dest, theta0)
    rows, width = dest2.shape
    stride = width if row_stride is None else row_stride
    if stride < 0:
        raise ValueError(f"write_update: row_stride {stride} is negative")
    check_range(offset, 0 if dest.numel() == 0 else (rows - 1) * stride + width)
    if not seeds:  # θ₀ itself: one conversion (exact widening, or rounding to nearest even), a plain copy
        with torch.no_grad():
            dest.copy_(theta0)
        return "copy"
    keys = [philox.key(int(seed)) for seed in seeds]
    amps32 = np.asarray(amplitudes, dtype=np.float64).astype(np.float32)
    if rank is not None:
        if shape is None:
            raise ValueError(f"write_update: rank-{rank} noise of '{name}' needs the matrix's shape")
        _write_torch(dest2, theta2, name, [int(s) for s in seeds], amps32.tolist(), offset, stride, scheme_name, (rank, tuple(shape)))
        return "torch"
    if scheme_name == DEFAULT_SCHEME:
        path = _fused_path(dest2, theta2)
        h = philox.name_hash(name)
        words = (h & 0xFFFFFFFF, h >> 32)
        if path == "numba":
            bf16, theta_bf16 = dest.dtype == torch.bfloat16, theta0.dtype == torch.bfloat16
            raw = dest2.view(torch.int16) if bf16 else dest2
            theta_raw = theta2.view(torch.int16) if theta_bf16 else theta2
            _numba_threads()
            flat = (rows == 1 or stride == width) and raw.is_contiguous() and theta_raw.is_contiguous()
            if len(keys) == 1 and flat:  # one seed over one range of the tensor: the vectorised kernel
                _cpu_writers()[1](raw.view(-1).numpy(), bf16, theta_raw.view(-1).numpy(), theta_bf16, offset, keys[0], amps32[0], words, *_cpu_tables())
            else:
                _cpu_writers()[0](
                    raw.numpy(), bf16, theta_raw.numpy(), theta_bf16, offset, stride,
                    np.array(keys, dtype=np.uint64).reshape(-1, 2), amps32, words, *_cpu_tables(),
                )  # fmt: skip
            return path
        if path == "triton":
            from corpmerge.noise import philox_triton

            device_keys = torch.tensor(keys, dtype=torch.int64, device=dest.device).reshape(-1, 2)
            philox_triton.write(dest2, theta2, device_keys, torch.from_numpy(amps32).to(dest.device), words, offset, stride, *philox.tables(dest.device))
            return path
    _write_torch(dest2, theta2, name, [int(s) for s in seeds], amps32.tolist(), offset, stride, scheme_name)
    return "torch"


def fused_kernel(device_type: str) -> str:
    """The kernel ``write_update`` uses for the portable scheme on this kind of device: "numba" (the CPU, float32 and
    bfloat16), "triton" (CUDA with Triton installed) or "torch" (separate torch operations)."""
    if device_type == "cpu":
        return "numba" if _cpu_writers() is not None else "torch"
    return "triton" if _triton_available(device_type) else "torch"


def _fused_path(dest: torch.Tensor, theta0: torch.Tensor) -> str:
    """Which fused kernel writes this destination: Numba on the CPU (float32/bfloat16), Triton where it runs (float32,
    bfloat16, float16), else torch ops (any floating dtype: θ₀ widened or rounded to float32 first)."""
    if dest.device.type == "cpu":
        plain = (torch.float32, torch.bfloat16)
        return "numba" if dest.dtype in plain and theta0.dtype in plain and _cpu_writers() is not None else "torch"
    supported = dest.dtype in FLOAT_DTYPES and theta0.dtype in FLOAT_DTYPES
    return "triton" if supported and _triton_available(dest.device.type) else "torch"


@lru_cache(maxsize=4)
def _triton_available(device_type: str) -> bool:
    if device_type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        log.warning("triton is not installed: the weight change on %s runs as torch ops (same bits, far slower)", device_type)
        return False
    return True


@lru_cache(maxsize=1)
def _cpu_writers() -> tuple[Callable, Callable] | None:
    """Numba's general ``write`` and its one-seed, one-range ``write_one``; None without Numba."""
    if _cpu_kernel() is None:
        return None
    from corpmerge.noise import philox_cpu

    return philox_cpu.write, philox_cpu.write_one


_WINDOW_CHUNK = 1 << 22  # elements of a window formed at once on the torch path (≈ 16 MiB per float32 temporary)


def _write_torch(
    dest: torch.Tensor,
    theta0: torch.Tensor,
    name: str,
    seeds: list[int],
    amps: list[float],
    offset: int,
    stride: int,
    scheme_name: str,
    low: tuple[int, tuple[int, ...]] | None = None,
) -> None:
    """The same update as separate torch operations, a block of rows at a time (the reference; any scheme, any device;
    ``low``: (rank, the matrix's shape) for rank-r noise)."""
    rows, width = dest.shape
    accumulate = scheme(scheme_name).accumulate
    step_rows, step_cols = max(1, _WINDOW_CHUNK // max(1, width)), min(width, _WINDOW_CHUNK) or 1
    for r0 in range(0, rows, step_rows):
        r1 = min(rows, r0 + step_rows)
        for c0 in range(0, width, step_cols):  # a long row (a 1-D tensor) in column blocks
            c1 = min(width, c0 + step_cols)
            value = theta0[r0:r1, c0:c1].to(torch.float32)
            acc: torch.Tensor | None = None
            for seed, amp in zip(seeds, amps):
                start = offset + r0 * stride + c0
                if low is None:
                    eps = _window_noise(seed, name, start, stride, r1 - r0, c1 - c0, dest.device, scheme_name)
                else:
                    eps = lowrank.window(seed, name, low[1], low[0], start, stride, r1 - r0, c1 - c0, device=dest.device, scheme=scheme_name)
                if acc is None:
                    acc = torch.mul(eps, amp)
                else:
                    accumulate(acc, eps, amp)
            if acc is not None:
                value = torch.add(value, acc)
            dest[r0:r1, c0:c1].copy_(value)


def _window_noise(seed: int, name: str, start: int, stride: int, rows: int, width: int, device: torch.device, scheme_name: str) -> torch.Tensor:
    """ε over ``rows`` rows of ``width`` elements, row i starting at flat element start + i·stride (float32, rows × width)."""
    out = torch.empty(rows, width, dtype=torch.float32, device=device)
    if stride == width or rows == 1:
        fill(out.view(-1), seed, name, start, scheme_name)
    else:
        fill_many([(out[i], seed, name, start + i * stride) for i in range(rows)], scheme_name)
    return out


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
