"""`corpmerge diagnose`: the split-half statistics of the method's elites (``corpmerge.report.diagnose``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from corpmerge.errors import CorpmergeError
from corpmerge.methods.weights import elite_indices
from corpmerge.model_io import ensure_checkpoint, model_skeleton, perturbed_names
from corpmerge.pipeline import keep_for, prepare
from corpmerge.plan import Checked
from corpmerge.population import Entry
from corpmerge.recipe import Recipe
from corpmerge.report.diagnose import plot, sketch, split_half
from corpmerge.scoring.racing import score_population
from corpmerge.scoring.session import open_session


def diagnosed_elites(checked: Checked, entries: list[Entry], top: int) -> tuple[list[Entry], float | None]:
    """The elites E = {i : rᵢ ≥ quantile_q(r)} at the grid's smallest q (the largest elite set any grid point
    uses; every entry for a method without one), best first, at most ``top``; and that q."""
    quantiles = [q for p in checked.grid if (q := checked.method.elite_quantile(p)) is not None]
    q = min(quantiles) if quantiles else None
    rewards = np.array([e.reward for e in entries], dtype=float)
    chosen = elite_indices(rewards, q) if q is not None else np.arange(len(entries))
    ranked = sorted(chosen.tolist(), key=lambda i: -rewards[i])
    return [entries[i] for i in ranked[:top]], q


def _rewarded(recipe: Recipe, checked: Checked, top: int) -> tuple[list[Entry], dict[str, tuple[int, ...]]]:
    """Every entry with its fold-A reward, and the shape of every perturbed tensor."""
    if recipe.scoring is None:
        model = model_skeleton(ensure_checkpoint(checked.base))
        params = dict(model.named_parameters())
        return checked.entries, {name: tuple(params[name].shape) for name in perturbed_names(model, recipe.perturb, recipe.rank)}
    with open_session(recipe, checked.base) as session:
        entries = score_population(session, checked.entries, keep=max(top, keep_for(checked)))
        return entries, {name: tuple(t.shape) for name, t in session.scorer.theta0.items()}


def diagnose_recipe(recipe: Recipe, top: int = 64, coords: int = 32, k: int = 8, splits: int = 20) -> dict[str, Any]:
    """Split-half statistics of the method's top-``top`` elites, plotted to ``<work_dir>/diagnose.png``."""
    checked = prepare(recipe, needs_rewards=recipe.scoring is None)
    entries, shapes = _rewarded(recipe, checked, top)
    elites, quantile = diagnosed_elites(checked, entries, top)
    if len(elites) < 4:
        at = f" at quantile {quantile:g}" if quantile is not None else ""
        raise CorpmergeError(
            f"population: the split-half diagnostic needs at least 4 elites, and {len(entries)} entries give {len(elites)}{at}; "
            "use a larger population (or a smaller parameters.quantile)"
        )
    matrix = sketch(elites, list(shapes), coords, shapes, recipe.noise, recipe.rank)
    temperature = min(checked.method.reward_temperature(p) for p in checked.grid)
    stats = split_half(matrix, k=k, splits=splits, rewards=np.array([e.reward for e in elites]), beta=temperature)
    path = recipe.output.work_path / "diagnose.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot(str(path), entries, matrix, stats)
    return {
        "entries": len(entries),
        "quantile": quantile,
        "elites": len(elites),
        "sketch_dims": int(matrix.shape[1]),
        "k": k,
        "splits": splits,
        "plot": str(path),
        "statistics": {name: {"mean": st.mean, "lower95": st.lower, "stable": st.stable} for name, st in stats.items()},
    }
