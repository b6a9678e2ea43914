"""Where corpmerge may write: never onto, into or around the base model, and ``--overwrite`` replaces only its own outputs.

The rules, checked by ``validate`` and again right before anything is written:

- ``output.path``, the work folder and ``scoring.store`` are not the base model's folder (or
  ``.gguf`` file), do not lie inside it and do not contain it, after resolving ``~``, symlinks,
  bind mounts (same device and inode) and the ``embedded:`` and Hub-id aliases;
- the work folder and the store do not lie inside ``output.path`` (replacing the output would delete them);
- an existing ``output.path`` is an empty folder, or, with ``--overwrite``, a previous corpmerge
  output (its ``corpmerge.yaml`` starts with ``corpmerge_version:``); never a file;
- the folders can be created: the nearest existing ancestor is a folder where a probe folder
  can be made (and is removed at once);
- the output fits in the free space where it will be written (``corpmerge.output.space``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from corpmerge.errors import CorpmergeError, excerpt
from corpmerge.model_io import BaseRef
from corpmerge.output.space import check_free_space
from corpmerge.recipe import Recipe

LINEAGE_FILE = "corpmerge.yaml"
LINEAGE_HEAD = b"corpmerge_version:"


def check_output_location(recipe: Recipe, base: BaseRef, overwrite: bool) -> None:
    """Refuse, in one line naming the field and the fix, an output or work location that could destroy data or cannot be written.

    ``base``: ``recipe.base_model`` as the command resolved it.
    """
    out = Path(recipe.output.path)
    _check_not_base(recipe.base_model, base, "output.path", out)
    _check_replaceable(out, overwrite)
    _check_creatable("output.path", out, out.parent)
    check_work_location(recipe, base)
    check_free_space(recipe, base, overwrite)


def check_work_location(recipe: Recipe, base: BaseRef) -> None:
    """The work folder (and a custom score store) alone: outside the base model (``base``, as resolved) and the output, creatable."""
    out = Path(recipe.output.path)
    work_field = "output.work_dir" if recipe.output.work_dir else f"output.work_dir (default {excerpt(str(out), 120)}.work)"
    places = [(work_field, recipe.output.work_path)]
    if recipe.scoring is not None and recipe.scoring.store:
        places.append(("scoring.store", Path(recipe.scoring.store)))
    for field, path in places:
        _check_not_base(recipe.base_model, base, field, path)
        if _within(path, out):
            raise CorpmergeError(
                f"{field}: '{_show(path)}' lies inside output.path '{_show(out)}', which is replaced when the model is written; put it beside the output folder"
            )
    work = recipe.output.work_path
    _check_creatable(work_field, work, work)
    if recipe.scoring is not None and recipe.scoring.store:
        store = Path(recipe.scoring.store)
        _check_creatable("scoring.store", store, store.parent)


def is_corpmerge_output(folder: Path) -> bool:
    """Whether ``folder`` holds a ``corpmerge.yaml`` that corpmerge wrote (checked by its first bytes)."""
    try:
        with (folder / LINEAGE_FILE).open("rb") as handle:
            return handle.read(len(LINEAGE_HEAD)) == LINEAGE_HEAD
    except OSError:
        return False


def base_locations(base_model: str, ref: BaseRef) -> list[Path]:
    """The files and folders that hold the base model (a folder, a .gguf file, an embedded package, a Hub cache entry);
    ``ref``: ``base_model`` resolved."""
    if ref.gguf_file is not None:
        return [Path(ref.source) if base_model.startswith("embedded:") else Path(ref.source) / ref.gguf_file]
    if ref.is_local:
        return [Path(ref.source)]
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = Path(HF_HUB_CACHE) / f"models--{ref.source.replace('/', '--')}"
    return [cached] if cached.exists() else []


def _check_not_base(base_model: str, ref: BaseRef, field: str, path: Path) -> None:
    for base in base_locations(base_model, ref):
        what = f"the base model's {'folder' if base.is_dir() else 'file'} '{_show(base)}'"
        if _within(path, base):
            relation = "is" if _same(path, base) else "lies inside"
            raise CorpmergeError(f"{field}: '{_show(path)}' {relation} {what}; writing there could destroy the base — choose a path outside it")
        if _within(base, path):
            raise CorpmergeError(f"{field}: '{_show(path)}' contains {what}; writing there could destroy the base — choose a path that does not contain it")


def _check_replaceable(out: Path, overwrite: bool) -> None:
    try:
        if not os.path.lexists(out):
            return
        if not out.is_dir():
            raise CorpmergeError(f"output.path: '{_show(out)}' is a file, not a folder; choose a folder path")
        if not any(out.iterdir()):
            return
    except OSError as exc:
        raise CorpmergeError(f"output.path: cannot inspect '{_show(out)}' ({exc.strerror}); choose another path") from None
    if not overwrite:
        raise CorpmergeError(
            f"output.path: '{_show(out)}' already exists; remove it, choose another path or pass --overwrite (which replaces only a previous corpmerge output)"
        )
    if not is_corpmerge_output(out):
        raise CorpmergeError(
            f"output.path: '{_show(out)}' is not a corpmerge output (no {LINEAGE_FILE} written by corpmerge), "
            "so --overwrite will not replace it; choose another path or empty it yourself"
        )


def _check_creatable(field: str, path: Path, parent: Path) -> None:
    """``parent`` (the folder a new entry is made in) exists or can be made: its nearest existing ancestor is a writable folder."""
    try:
        ancestor = next(p for p in [parent.absolute(), *parent.absolute().parents] if os.path.lexists(p))
        is_dir = ancestor.is_dir()
    except OSError as exc:
        raise CorpmergeError(f"{field}: cannot inspect '{_show(path)}' ({exc.strerror}); choose another path") from None
    if not is_dir:
        raise CorpmergeError(f"{field}: '{_show(path)}' lies under '{_show(ancestor)}', which is a file; choose a folder path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".corpmerge-probe-", dir=ancestor))
    except OSError as exc:
        raise CorpmergeError(
            f"{field}: cannot create '{_show(path)}': no new folder can be made in '{_show(ancestor)}' "
            f"({exc.strerror or type(exc).__name__}); choose a writable location"
        ) from None


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies inside it (resolved paths, or the same file-system object)."""
    outer_resolved = _resolve(outer)
    outer_id = _identity(outer_resolved)
    inner_resolved = _resolve(inner)
    return any(p == outer_resolved or (outer_id is not None and _identity(p) == outer_id) for p in [inner_resolved, *inner_resolved.parents])


def _same(a: Path, b: Path) -> bool:
    ra, rb = _resolve(a), _resolve(b)
    return ra == rb or (_identity(ra) is not None and _identity(ra) == _identity(rb))


def _resolve(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare what can be compared
        return path.expanduser().absolute()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _show(path: Path | str) -> str:
    return excerpt(str(path), 120)
