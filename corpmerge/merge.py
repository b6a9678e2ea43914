"""`corpmerge merge`: a population that already carries rewards → one merged model folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from corpmerge.amplitudes import Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.hub import push_folder
from corpmerge.methods import MergeMethod, MergeResult, MethodParams, get_method
from corpmerge.model_io import ensure_checkpoint, load_base, load_tokenizer, resolve_base
from corpmerge.noise import check_scheme
from corpmerge.population import Entry
from corpmerge.recipe import Recipe, SampledPopulation
from corpmerge.output import write_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    """A recipe that passed every check short of loading weights."""

    recipe: Recipe
    method: MergeMethod
    grid: list[MethodParams]
    entries: list[Entry]


def check_recipe(recipe: Recipe, *, needs_rewards: bool) -> Checked:
    """Cross-field checks shared by validate/merge/run (no weights are touched)."""
    check_scheme(recipe.noise)
    resolve_base(recipe.base_model)
    method = get_method(recipe.merge_method)
    grid = method.grid(recipe.parameters)
    entries = recipe.entries()
    if needs_rewards:
        if isinstance(recipe.population, SampledPopulation):
            raise CorpmergeError(
                "population: a sampled population has no rewards yet; add a `scoring:` section and use `corpmerge run`"
            )
        for i, entry in enumerate(entries):
            if entry.reward is None:
                raise CorpmergeError(
                    f"population[{i}].reward: missing; merge_method '{method.name}' needs a reward for every entry "
                    "(give rewards, or add a `scoring:` section and use `corpmerge run`)"
                )
        if recipe.gate.enabled:
            raise CorpmergeError(
                "gate.enabled: the gate needs scoring, which `corpmerge merge` does not do; "
                "set `gate: {enabled: false}` to merge from the given rewards, or use `corpmerge run` with a `scoring:` section"
            )
    if recipe.iterate is not None and (recipe.scoring is None or not recipe.gate.enabled or recipe.merge_method == "ties"):
        raise CorpmergeError(
            "iterate: stage 2 needs `scoring:`, the gate enabled and an amplitude method (corp, reward_avg, topk_subspace, best)"
        )
    if len(grid) > 1 and (needs_rewards or not recipe.gate.enabled):
        raise CorpmergeError(
            "parameters: a list value is a grid, and only the gate can choose from a grid; "
            "give single values, or enable the gate and use `corpmerge run`"
        )
    return Checked(recipe, method, grid, entries)


def merge_recipe(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False) -> tuple[Path, MergeResult]:
    """Merge a rewarded population (gate disabled) and write the output folder."""
    recipe = recipe.with_output(out_dir)
    checked = check_recipe(recipe, needs_rewards=True)
    result = checked.method(Cloud.from_entries(checked.entries), checked.grid[0])
    ref = ensure_checkpoint(resolve_base(recipe.base_model))
    log.info("loading base %s", recipe.base_model)
    model = load_base(ref)
    tokenizer = load_tokenizer(ref)
    out = Path(recipe.output.path)
    write_output(out, recipe=recipe, entries=checked.entries, result=result, model=model, tokenizer=tokenizer, ref=ref, overwrite=overwrite)
    if recipe.output.push_to_hub:
        push_folder(out, recipe.output.push_to_hub, private=recipe.output.private)
    return out, result
