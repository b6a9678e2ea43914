"""Streaming writer: θ₀ + Δ tensor by tensor into sharded safetensors, published atomically."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from corpmerge.dtypes import TORCH_DTYPES
from corpmerge.errors import CorpmergeError, excerpt, first_line

log = logging.getLogger(__name__)

DeltaFn = Callable[[str, torch.Size], torch.Tensor]
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class TensorSource(Protocol):
    """Where the base's tensors come from (a ``model_io.Checkpoint``): names, metadata, and one tensor at a time."""

    def names(self) -> list[str]: ...
    def info(self, name: str) -> tuple[torch.Size, bool, int]: ...
    def tensor(self, name: str) -> torch.Tensor: ...


def plan_shards(source: TensorSource, names: list[str], dtype: torch.dtype, max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        shape, floating, itemsize = source.info(name)
        nbytes = math.prod(shape) * (dtype.itemsize if floating else itemsize)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


@contextmanager
def staging_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden folder beside ``out_dir`` that replaces it only when the block completes.

    Nothing is left behind when the block fails; a failure of the file system (full disk, no
    permission) becomes a one-line CorpmergeError, and a previous ``out_dir`` stays in place.
    Whether ``out_dir`` may be replaced at all is the caller's check (``output.location``).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CorpmergeError(f"output.path: '{out_dir}' already exists; remove it, choose another path or pass --overwrite")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise _write_error(out_dir, exc) from None
    try:
        yield tmp
        _publish(tmp, out_dir)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(out_dir, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``; a previous ``out_dir`` is removed only once the new one is in place."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_error(out_dir: Path, exc: Exception) -> CorpmergeError:
    reason = getattr(exc, "strerror", None) or first_line(exc)
    return CorpmergeError(
        f"output.path: writing '{excerpt(str(out_dir), 120)}' failed ({excerpt(reason, 120)}); nothing was written — free space or choose a writable location"
    )


def check_finite(name: str, value: torch.Tensor, dtype: str) -> None:
    """Refuse a perturbed tensor with inf or NaN values (θ₀ + Δ overflowed ``dtype``): nothing is published."""
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise CorpmergeError(
            f"{name}: θ₀ + Δ has {bad:,} non-finite (inf/NaN) values in {dtype}, so nothing was written; the update is too large "
            "for these weights: use a smaller σ (docs/sizing.md: choosing σ)"
        )


def write_weights(
    folder: Path,
    source: TensorSource,
    names: list[str],
    delta: DeltaFn,
    perturbed: set[str],
    dtype: str,
    max_shard_bytes: int,
    on_tensor: Callable[[str], None] | None = None,
) -> list[str]:
    """Write θ₀ + Δ (float32 sum, one rounding to ``dtype``) as safetensors shards (+ index), streaming
    θ₀ from ``source`` one tensor at a time (at most one shard is held in memory)."""
    out_dtype = TORCH_DTYPES[dtype]
    shards = plan_shards(source, names, out_dtype, max_shard_bytes)
    files = shard_file_names(len(shards))
    weight_map: dict[str, str] = {}
    total = 0
    for shard_names, file in zip(shards, files):
        shard: dict[str, torch.Tensor] = {}
        for name in shard_names:
            base = source.tensor(name)
            if name in perturbed:
                value = base.to(torch.float32) + delta(name, base.shape)
            else:
                value = base
            if value.is_floating_point():
                value = value.to(out_dtype)
            if name in perturbed:
                check_finite(name, value, dtype)
            shard[name] = value.contiguous()
            weight_map[name] = file
            total += shard[name].numel() * shard[name].element_size()
            if on_tensor:
                on_tensor(name)
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        os.chmod(folder / file, _FILE_MODE)
        log.debug("wrote %s (%d tensors)", file, len(shard_names))
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files
