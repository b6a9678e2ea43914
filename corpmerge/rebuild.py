"""`corpmerge rebuild`: write a model again from its lineage (``corpmerge.yaml``) and its base, and compare the bits.

A linear method's update is the lineage table, Δ = Σₛ aₛ·ε(s) (the probe multiplier and any stage-2
offset folded in), written through the same streaming writer as the original; a tensor-wise
method (``ties``) is merged again from the lineage's recipe (population with rewards) and
parameters, times the recorded multiplier. Weights are compared tensor by tensor, byte for byte.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from corpmerge.amplitudes import Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.methods import MergeResult, get_method
from corpmerge.model_io import BaseRef, ensure_checkpoint, load_tokenizer
from corpmerge.output.folder import LINEAGE_TOO_BIG, MAX_LINEAGE_BYTES, read_lineage_text, shipped_update, write_output
from corpmerge.output.location import LINEAGE_FILE
from corpmerge.output.report_schema import REPORT_FILE, read_report
from corpmerge.recipe import Recipe, parse_recipe
from corpmerge.yaml_io import read_text_bounded

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Comparison:
    """How the rebuilt weights compare with the shipped ones."""

    tensors: int
    differing: list[str]

    @property
    def equal(self) -> bool:
        return not self.differing


@dataclass(frozen=True)
class Lineage:
    """An output folder's lineage, read: the folder, its lineage document and the recipe in it."""

    folder: Path
    document: dict[str, Any]
    recipe: Recipe


def open_lineage(path: Path) -> Lineage:
    """The lineage of an output folder (or of its ``corpmerge.yaml``) with its recipe, so that the command can resolve the base."""
    document = read_lineage(path)
    return Lineage(path if path.is_dir() else path.parent, document, lineage_recipe(document, path))


def read_lineage(path: Path) -> dict[str, Any]:
    """The lineage document of an output folder (or its ``corpmerge.yaml``), read with the lineage bounds."""
    path = path / LINEAGE_FILE if path.is_dir() else path
    text = read_text_bounded(path, MAX_LINEAGE_BYTES, "the lineage file", LINEAGE_TOO_BIG)
    if text is None:
        raise CorpmergeError(f"{path}: not found; give an output folder corpmerge wrote, or its {LINEAGE_FILE}")
    document = read_lineage_text(text, path)
    if not isinstance(document, dict) or not isinstance(document.get("recipe"), dict) or "merge" not in document:
        raise CorpmergeError(f"{path}: not a corpmerge lineage (no `recipe` and `merge`); give the {LINEAGE_FILE} of an output folder")
    return document


def lineage_recipe(document: dict[str, Any], path: Path) -> Recipe:
    """The resolved recipe of a lineage, with the lineage's own noise scheme (its top-level ``noise``)."""
    data = dict(document["recipe"])
    if document.get("noise") is not None:
        data["noise"] = document["noise"]
    return parse_recipe(data, str(path), lineage=True)


def lineage_result(document: dict[str, Any], recipe: Recipe, folder: Path) -> MergeResult | None:
    """The update the lineage describes; None for an abstention written with ``write_on_abstain`` (the base)."""
    merge = document["merge"]
    if merge is None:
        return None
    seeds = {e.seed: i for i, e in enumerate(recipe.entries())}
    elites = np.array([seeds[s] for s in merge.get("elite_seeds") or [] if s in seeds], dtype=np.int64)
    weights = np.array(merge.get("elite_weights") or [], dtype=float)
    table = shipped_update(folder)
    if table is not None:
        return MergeResult(merge["method"], merge["parameters"], elites, weights, amplitudes=table, info=merge.get("info") or {})
    method = get_method(merge["method"])
    return method(Cloud.from_entries(recipe.entries()), method.point(merge["parameters"])).scaled(float(merge["multiplier"]))


def compare_weights(shipped: Path, rebuilt: Path) -> Comparison:
    """Tensor names and bytes of every safetensors file in both folders."""

    def tensors(folder: Path) -> dict[str, tuple[Path, str]]:
        found = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                found.update({name: (file, name) for name in handle.keys()})
        return found

    left, right = tensors(shipped), tensors(rebuilt)
    differing = sorted(set(left) ^ set(right))
    for name in sorted(set(left) & set(right)):
        with safe_open(str(left[name][0]), framework="pt") as a, safe_open(str(right[name][0]), framework="pt") as b:
            if not same_bits(a.get_tensor(name), b.get_tensor(name)):
                differing.append(name)
    return Comparison(len(left), differing)


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaNs and signed zeros compared as bits, not values)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    kind = _INT_OF_SIZE[x.element_size()]
    return torch.equal(x.contiguous().view(kind), y.contiguous().view(kind))


def rebuild(lineage: Lineage, base: BaseRef, out_dir: Path, overwrite: bool = False) -> tuple[Path, Comparison]:
    """Write the model of ``lineage`` on ``base`` (its recipe's ``base_model``, resolved) to ``out_dir``; compare with the shipped weights.

    The rebuilt folder carries the shipped lineage document (merge section, multiplier and table as shipped; the base
    pinned again, as found) and, when the shipped folder has them, its report.json and report.png, so its card has
    the same model-index."""
    recipe = lineage.recipe.with_output(out_dir)
    result = lineage_result(lineage.document, recipe, lineage.folder)
    ref = ensure_checkpoint(base)
    report_path = lineage.folder / REPORT_FILE
    report = read_report(report_path) if report_path.is_file() else None
    shipped_png = lineage.folder / "report.png"
    picture = (lambda path: shutil.copyfile(shipped_png, path)) if report is not None and shipped_png.is_file() else None
    document = {k: v for k, v in lineage.document.items() if k != "base"}
    write_output(
        out_dir,
        recipe=recipe,
        entries=recipe.entries(),
        result=result,
        tokenizer=load_tokenizer(ref),
        base=base,
        ref=ref,
        report=report,
        picture=picture,
        overwrite=overwrite,
        lineage=document,
    )
    return out_dir, compare_weights(lineage.folder, out_dir)
