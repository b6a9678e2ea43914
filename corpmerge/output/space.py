"""Free space for the output folder: the bytes it will need against what its file system has free.

Checked with the location (``validate``, before scoring, before writing). The need is counted
without loading weights: every tensor of the base (safetensors headers, or the GGUF header) at
the output dtype (non-float tensors at their own size), plus the tokenizer and config files, the
shard headers and index, and the lineage, card and report (which grow with the population). The
writer stages the folder beside ``output.path`` and renames it, and with ``--overwrite`` the old
folder stays until the new one is in place, so all of it must fit in the space free now (free
to unprivileged users: ``f_bavail``).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

from corpmerge.dtypes import TORCH_DTYPES
from corpmerge.errors import CorpmergeError, excerpt
from corpmerge.model_io import BaseRef
from corpmerge.recipe import Recipe, SampledPopulation

log = logging.getLogger(__name__)

FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
OTHER_DTYPES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)
GGUF_TOKENIZER_ALLOWANCE = 16 * 2**20  # a GGUF base's tokenizer is rebuilt from its metadata, not copied
PER_TENSOR = 256  # shard header and index entry
PER_ENTRY = 256  # population and lineage rows in corpmerge.yaml, rewards in report.json
FIXED = 2 * 2**20  # model card, report.png, report.json


def check_free_space(recipe: Recipe, base: BaseRef, overwrite: bool) -> None:
    """Refuse in one line, with both numbers, an output that does not fit in the free space where it will be written
    (``base``: ``recipe.base_model`` resolved)."""
    out = Path(recipe.output.path).expanduser()
    need = output_bytes(recipe, base)
    if need is None:
        return
    where = next(p for p in [out.parent.absolute(), *out.parent.absolute().parents] if p.exists())
    free = free_bytes(where)
    if need > free:
        staying = " (the previous output stays until the new one is complete)" if overwrite and out.exists() else ""
        raise CorpmergeError(
            f"output.path: '{excerpt(str(out), 120)}' needs about {show_bytes(need)} ({recipe.dtype} weights, tokenizer, "
            f"lineage and card){staying}, but only {show_bytes(free)} are free on '{excerpt(str(where), 120)}'; "
            "free space there or choose another output.path"
        )


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged process can still write on ``folder``'s file system."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def show_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def output_bytes(recipe: Recipe, ref: BaseRef) -> int | None:
    """Bytes of the output folder (see the module docstring) on ``ref`` (``recipe.base_model`` resolved); None when the
    base cannot be sized without downloading it."""
    itemsize = TORCH_DTYPES[recipe.dtype].itemsize
    try:
        sized = _gguf_tensors(ref, itemsize) if ref.gguf_file else _checkpoint_tensors(ref, itemsize)
    except (ImportError, OSError, ValueError, KeyError, struct.error) as exc:  # loading the base reports a broken one
        log.debug("cannot size the output from %s: %s", ref.source, exc)
        return None
    if sized is None:
        log.debug("cannot size the output: %s has no local weight files", ref.source)
        return None
    weights, tensors, extra = sized
    population = recipe.population
    entries = population.size if isinstance(population, SampledPopulation) else len(recipe.listed())
    return weights + PER_TENSOR * tensors + extra + PER_ENTRY * entries + FIXED


def _checkpoint_tensors(ref: BaseRef, itemsize: int) -> tuple[int, int, int] | None:
    folder = Path(ref.source) if ref.is_local else _cached_snapshot(ref.source)
    if folder is None:
        return None
    extra = sum((folder / name).stat().st_size for name in COPIED_FILES if (folder / name).is_file())
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if files:
        weights = tensors = 0
        for file in files:
            for name, info in _safetensors_header(file).items():
                if name == "__metadata__":
                    continue
                numel = 1
                for dim in info["shape"]:
                    numel *= dim
                weights += numel * (itemsize if info["dtype"] in FLOAT_DTYPES else OTHER_DTYPES.get(info["dtype"], 8))
                tensors += 1
        return weights, tensors, extra
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        return None
    config = json.loads((folder / "config.json").read_text())
    name = str(config.get("torch_dtype") or config.get("dtype"))
    stored = TORCH_DTYPES[name].itemsize if name in TORCH_DTYPES else 4
    return sum(b.stat().st_size for b in bins) * itemsize // stored, 0, extra


def _safetensors_header(file: Path) -> dict:
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{file.name}: implausible header length {length}")
        return json.loads(handle.read(length))


def _gguf_tensors(ref: BaseRef, itemsize: int) -> tuple[int, int, int]:
    """Element counts from a GGUF v2/v3 header: metadata skipped, then each tensor's name, dims, type and offset."""
    fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar types → bytes
    with (Path(ref.source) / ref.gguf_file).open("rb") as f:

        def u(fmt: str) -> int:
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def skip(kind: int) -> None:
            if kind == 8:  # string
                f.seek(u("Q"), os.SEEK_CUR)
            elif kind == 9:  # array: element type, count, elements
                element, count = u("I"), u("Q")
                if element in fixed:
                    f.seek(fixed[element] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(element)
            else:
                f.seek(fixed[kind], os.SEEK_CUR)

        magic, version = f.read(4), u("I")
        if magic != b"GGUF" or version < 2:
            raise ValueError(f"not a GGUF v2/v3 file (version {version})")
        tensors, keys = u("Q"), u("Q")
        for _ in range(keys):
            skip(8)
            skip(u("I"))
        weights = 0
        for _ in range(tensors):
            skip(8)
            numel = 1
            for _ in range(u("I")):
                numel *= u("Q")
            f.seek(4 + 8, os.SEEK_CUR)  # type, offset
            weights += numel * itemsize
    return weights, tensors, GGUF_TOKENIZER_ALLOWANCE


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # not in the local cache: the size is unknown until it is downloaded
        return None
