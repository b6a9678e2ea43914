"""The output folder: weights and config (``output.format: full``) or a PEFT LoRA adapter (``peft``), tokenizer, model
card and ``corpmerge.yaml`` lineage."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from corpmerge import __version__, yaml_io
from corpmerge import recipe as recipes
from corpmerge.amplitudes import Amplitudes
from corpmerge.dtypes import TORCH_DTYPES
from corpmerge.errors import CorpmergeError
from corpmerge.methods import MergeResult
from corpmerge.model_io import BaseRef, Checkpoint, checkpoint_folder, model_skeleton, perturbed_names, tied_aliases
from corpmerge.noise import NOISE_BATCH
from corpmerge.output.base_pin import pin_base
from corpmerge.output.location import LINEAGE_FILE, check_output_location
from corpmerge.output.model_card import render_abstain_card, render_model_card
from corpmerge.output.peft_adapter import adapter_base, save_adapter
from corpmerge.output.report_schema import REPORT_FILE, RunReport, ShippedCheck
from corpmerge.output.safetensors_writer import staging_dir, write_weights
from corpmerge.population import Entry
from corpmerge.progress import task
from corpmerge.recipe import Recipe
from corpmerge.yaml_io import MAX_RECIPE_BYTES, dump_yaml, read_text_bounded, read_yaml

log = logging.getLogger(__name__)
# a lineage lists its recipe with every entry (a sampled population too), 2 values per elite and 5 per shipped
# seed: 14 YAML values and ≈ 140 bytes per entry when every entry is an elite (77 measured at 100k entries, q = 0.7)
LINEAGE_VALUES_PER_ENTRY, LINEAGE_BYTES_PER_ENTRY = 14, 160
MAX_LINEAGE_BYTES = MAX_RECIPE_BYTES + LINEAGE_BYTES_PER_ENTRY * recipes.MAX_POPULATION
LINEAGE_TOO_BIG = f"a lineage file corpmerge writes stays under {MAX_LINEAGE_BYTES // 2**20} MiB; this is not one, rerun the merge"
# what ``lineage_document`` writes one row of per entry, per elite or per shipped seed
LINEAGE_LONG_LISTS = frozenset(
    {("recipe", "population"), ("recipe", "population", "entries"), ("merge", "elite_seeds"), ("merge", "elite_weights"), ("lineage",)}
)


def population_summary(entries: list[Entry], rank: int | None = None) -> dict[str, Any]:
    """Size, σ levels and reward range; ``rank`` (``population.rank``) only when the noise is rank-r."""
    rewards = np.array([e.reward for e in entries if e.reward is not None], dtype=float)
    return {
        **({"rank": rank} if rank is not None else {}),
        "size": len(entries),
        "sigmas": dict(sorted(Counter(e.sigma for e in entries).items())),
        "reward_min": float(rewards.min()) if rewards.size else float("nan"),
        "reward_mean": float(rewards.mean()) if rewards.size else float("nan"),
        "reward_max": float(rewards.max()) if rewards.size else float("nan"),
    }


def lineage_document(recipe: Recipe, entries: list[Entry], result: MergeResult | None, estimates: dict[int, int] | None = None) -> dict[str, Any]:
    """Everything needed to explain and rebuild the model: resolved recipe, merge choice, amplitudes.

    ``estimates``: entry index → the fold-A examples behind its reward where racing stopped it early (written as the
    entry's ``examples``, as in rewards.yaml).

    ``result=None`` (an abstained run written with ``write_on_abstain``) has ``merge`` and ``lineage`` null.
    The first key is ``corpmerge_version``: it is how ``--overwrite`` recognises a corpmerge output.
    """
    resolved = recipe.dump()
    estimates = estimates or {}
    rows = [{"seed": e.seed, "sigma": e.sigma, **({"examples": estimates[i]} if i in estimates else {}), "reward": e.reward} for i, e in enumerate(entries)]
    resolved["population"] = rows if recipe.rank is None else {"rank": recipe.rank, "entries": rows}
    head = {"corpmerge_version": __version__, "noise": recipe.noise, "recipe": resolved}
    if result is None:
        return {**head, "merge": None, "population_summary": population_summary(entries, recipe.rank), "lineage": None}
    amplitudes = result.final_amplitudes()
    return {
        **head,
        "merge": {
            "method": result.method,
            "parameters": result.params,
            "multiplier": result.multiplier,
            # a stage-2 step's elites index its local population, whose members are in the lineage table
            "elite_seeds": [entries[i].seed for i in result.elites.tolist()] if result.offset is None else None,
            "elite_weights": [float(w) for w in result.weights] if result.offset is None else None,
            **({"info": result.info} if result.info else {}),
        },
        "population_summary": population_summary(entries, recipe.rank),
        "lineage": amplitudes.table() if amplitudes is not None else None,
    }


def _drop_load_options(path: Path) -> None:
    """How corpmerge loaded the tokenizer (``local_files_only``) is not part of it: left out of the written config."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.pop("local_files_only", None) is not None:
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _save_config(folder: Path, target: Path, dtype: str) -> None:
    """The base folder's config (with the output dtype) and generation config, never a live model's."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    config.dtype = TORCH_DTYPES[dtype]
    config.save_pretrained(target)
    if (folder / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(folder).save_pretrained(target)


def write_output(
    out_dir: str | Path,
    *,
    recipe: Recipe,
    entries: list[Entry],
    result: MergeResult | None,
    tokenizer: Any,
    base: BaseRef,
    ref: BaseRef,
    report: RunReport | None = None,
    picture: Callable[[Path], Any] | None = None,
    verify: Callable[[Path], dict[str, Any]] | None = None,
    overwrite: bool = False,
    lineage: dict[str, Any] | None = None,
    estimates: dict[int, int] | None = None,
) -> Path:
    """Write the merged model (``result=None`` writes the base unchanged) and publish it atomically: its full weights,
    or with ``output.format: peft`` the update as a PEFT LoRA adapter on the base (``peft_adapter``), without weights or config.

    θ₀ is streamed from the base checkpoint's files on the host (``ref``: a folder, a Hub id, a
    converted GGUF), so the output never depends on the device scoring ran on or on the scorer's
    state. ``base`` is ``recipe.base_model`` as the command resolved it (``ref`` is its checkpoint),
    pinned in the lineage. ``verify(staged folder)`` runs once weights and config (or the adapter) and the tokenizer are
    staged and before the card is written; its answer goes into ``report.shipped_check`` and the card.
    ``estimates``: as ``lineage_document`` takes them (racing's early-stopped entries and their examples).
    ``lineage``: the lineage document to write (``rebuild``: the shipped one, its base pinned again); default
    ``lineage_document(recipe, entries, result)``. The location is checked again first (``check_output_location``): never onto or around the base,
    ``overwrite`` replaces only a previous corpmerge output.
    """
    out_dir = Path(out_dir)
    check_output_location(recipe.with_output(out_dir), base, overwrite)
    folder = checkpoint_folder(ref)
    source = Checkpoint(folder)
    skeleton = model_skeleton(BaseRef(str(folder)))
    aliases = tied_aliases(skeleton)
    names = [name for name in source.names() if name not in aliases]
    perturbed = set(perturbed_names(skeleton, recipe.perturb, recipe.rank)) if result is not None else set()
    missing = sorted(perturbed - set(names))
    if missing:
        raise CorpmergeError(f"base_model: the checkpoint has no tensor for parameter '{missing[0]}', so it cannot be written")
    adapter: dict[str, Any] | None = None
    with staging_dir(out_dir, overwrite) as tmp:
        if recipe.adapter_output and result is not None:
            adapter = _stage_adapter(tmp, recipe, result, {name: source.info(name)[0] for name in names if name in perturbed}, base, ref)
            written = f"a LoRA adapter of rank {adapter['r']}"
        else:
            written = f"{len(_stage_weights(tmp, recipe, result, source, names, perturbed))} weight file(s)"
            _save_config(folder, tmp, recipe.dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _drop_load_options(tmp / "tokenizer_config.json")
        if verify is not None and report is not None:
            report.shipped_check = ShippedCheck(**verify(tmp))
        lineage = {**lineage} if lineage is not None else lineage_document(recipe, entries, result, estimates)
        lineage["base"] = pin_base(recipe.base_model, base, ref)
        (tmp / LINEAGE_FILE).write_text(dump_yaml(lineage))
        shown = None
        if report is not None and picture is not None:
            picture(tmp / "report.png")
            shown = "report.png"
        if result is not None:
            location = recipe.output.push_to_hub or str(out_dir.resolve())  # what the card's lm-eval command loads
            (tmp / "README.md").write_text(render_model_card(lineage, report, picture=shown, location=location, adapter=adapter))
        elif report is not None:
            (tmp / "README.md").write_text(render_abstain_card(lineage, report, picture=shown))
        if report is not None:
            report.write(tmp / REPORT_FILE)
    log.info("wrote %s (%s)", out_dir, written)
    return out_dir


def _stage_weights(tmp: Path, recipe: Recipe, result: MergeResult | None, source: Checkpoint, names: list[str], perturbed: set[str]) -> list[str]:
    """θ₀ + Δ of every tensor (θ₀ where unperturbed, or with ``result=None``), streamed into ``tmp``; the files written."""
    largest = max(math.prod(source.info(name)[0]) for name in names)
    scratch = torch.empty(max(largest, NOISE_BATCH), dtype=torch.float32)

    def delta(name: str, shape: torch.Size) -> torch.Tensor:
        return result.delta(name, shape, scratch, recipe.noise, recipe.rank)

    with task("writing weights", len(names)) as advance:
        return write_weights(tmp, source, names, delta, perturbed, recipe.dtype, recipe.output.shard_bytes, on_tensor=lambda _: advance())


def _stage_adapter(tmp: Path, recipe: Recipe, result: MergeResult, matrices: dict[str, Any], base: BaseRef, ref: BaseRef) -> dict[str, Any]:
    """``output.format: peft``: the update Σₖ aₖ·ε_r(sₖ) on the perturbed matrices as a PEFT LoRA adapter in ``tmp``
    (no full weights, no config); its adapter config."""
    update = result.final_amplitudes()
    if update is None:
        raise CorpmergeError(
            f"output.format: peft writes a sum of the population's rank-r noise, and '{result.method}' made a tensor-wise update; use output.format: full"
        )
    return save_adapter(tmp, base=adapter_base(recipe.base_model, base, ref), matrices=matrices, rank=recipe.rank, scheme=recipe.noise, update=update)


def read_lineage_text(text: str, path: Path) -> Any:
    """A lineage file's text (read with ``MAX_LINEAGE_BYTES``) as plain data, within the lineage's bound on YAML values:
    the recipe's (``yaml_io.MAX_NODES``) plus ``LINEAGE_VALUES_PER_ENTRY`` per entry of the largest population."""
    bound = yaml_io.MAX_NODES + LINEAGE_VALUES_PER_ENTRY * recipes.MAX_POPULATION
    return read_yaml(text, str(path), LINEAGE_LONG_LISTS, bound, "lineage file")


def shipped_update(folder: Path) -> Amplitudes | None:
    """The merged model's update from the folder's lineage file: its table's (seed, amplitude) rows; None without one
    (no lineage file, or an abstention written with ``write_on_abstain``)."""
    path = folder / LINEAGE_FILE
    text = read_text_bounded(path, MAX_LINEAGE_BYTES, "the lineage file", LINEAGE_TOO_BIG)
    document = read_lineage_text(text, path) if text is not None else None
    table = document.get("lineage") if isinstance(document, dict) else None
    if not table:
        return None
    try:
        return Amplitudes(np.array([int(r["seed"]) for r in table], dtype=np.int64), np.array([float(r["amplitude"]) for r in table]))
    except (TypeError, KeyError, ValueError):
        raise CorpmergeError(f"{path}: 'lineage' must be a list of {{seed, amplitude}} rows, as corpmerge writes it; rerun the merge") from None
