"""`corpmerge merge`: a population that already carries rewards → one merged model folder."""

from __future__ import annotations

import logging
from pathlib import Path

from corpmerge.amplitudes import Cloud
from corpmerge.methods import MergeResult
from corpmerge.model_io import ensure_checkpoint, load_tokenizer
from corpmerge.output.folder import write_output
from corpmerge.output.hub import push_folder
from corpmerge.output.location import check_output_location
from corpmerge.plan import check_recipe, sigma_scale_warning
from corpmerge.recipe import Recipe

log = logging.getLogger(__name__)


def merge_recipe(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False) -> tuple[Path, MergeResult]:
    """Merge a rewarded population (gate disabled) and write the output folder.

    The output location is checked before any weights are loaded, and again right before writing.
    """
    recipe = recipe.with_output(out_dir)
    checked = check_recipe(recipe, needs_rewards=True)
    check_output_location(recipe, checked.base, overwrite)
    result = checked.method(Cloud.from_entries(checked.entries), checked.grid[0])
    ref = ensure_checkpoint(checked.base)
    sigma_scale_warning(ref, recipe, checked.entries)
    tokenizer = load_tokenizer(ref)
    out = Path(recipe.output.path)
    write_output(out, recipe=recipe, entries=checked.entries, result=result, tokenizer=tokenizer, base=checked.base, ref=ref, overwrite=overwrite)
    if recipe.output.push_to_hub:
        push_folder(out, recipe.output.push_to_hub, private=recipe.output.private)
    return out, result
