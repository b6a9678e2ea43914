"""A recipe checked against everything short of loading weights: its entries, its method and its grid."""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from dataclasses import dataclass

from corpmerge.errors import CorpmergeError, first_line
from corpmerge.methods import MergeMethod, MethodParams, get_method, method_names
from corpmerge.model_io import BaseRef, resolve_base
from corpmerge.noise import check_scheme
from corpmerge.population import Entry
from corpmerge.recipe import Recipe, SampledPopulation
from corpmerge.scoring.folds import assign_folds, check_gate_fold_sizes, fold_fingerprint
from corpmerge.scoring.lmeval import TaskSuite, include_paths, task_manager
from corpmerge.scoring.session import store_path, suite_counts
from corpmerge.scoring.store import IDENTITY_LABELS

log = logging.getLogger(__name__)

MIN_LOCAL_ELITES = 10  # below it a stage-2 step averages a handful of random local perturbations


@dataclass(frozen=True)
class Checked:
    """A recipe that passed every check short of loading weights."""

    recipe: Recipe
    method: MergeMethod
    grid: list[MethodParams]
    entries: list[Entry]
    base: BaseRef  # ``base_model`` resolved, once per command
    notes: tuple[str, ...] = ()  # what a user should know about how the recipe will be read (validate prints them)


def check_recipe(recipe: Recipe, *, needs_rewards: bool, base: BaseRef | None = None) -> Checked:
    """Cross-field checks shared by validate/merge/run (no weights are touched).

    ``base``: ``recipe.base_model`` as the command already resolved it (None: resolved here); carried as ``Checked.base``.
    """
    check_scheme(recipe.noise)
    base = base or resolve_base(recipe.base_model)
    if recipe.scoring is not None:
        check_task_names(recipe)
        check_store(recipe)
    method = get_method(recipe.merge_method)
    grid = method.grid(recipe.parameters)
    entries = recipe.entries()
    if needs_rewards:
        if isinstance(recipe.population, SampledPopulation):
            fix = "use `corpmerge run`" if recipe.scoring is not None else "add a `scoring:` section and use `corpmerge run`"
            raise CorpmergeError(f"population: a sampled population has no rewards yet, and `corpmerge merge` only merges given rewards; {fix}")
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
    if recipe.iterate is not None and (recipe.scoring is None or not recipe.gate.enabled or not method.linear):
        linear = ", ".join(n for n in method_names() if get_method(n).linear)
        raise CorpmergeError(f"iterate: stage 2 needs `scoring:`, the gate enabled and a method whose update is an amplitude table ({linear})")
    if len(grid) > 1 and (needs_rewards or not recipe.gate.enabled):
        raise CorpmergeError(
            "parameters: a list value is a grid, and only the gate can choose from a grid; give single values, or enable the gate and use `corpmerge run`"
        )
    if recipe.scoring is not None and recipe.gate.enabled and recipe.scoring.support.limit is not None:
        support, per_task = recipe.scoring.support, recipe.scoring.support.limit
        sizes = {"B": round(support.folds.validate_ * per_task), "C": 0}
        sizes["C"] = per_task - round(support.folds.construct_ * per_task) - sizes["B"]
        check_gate_fold_sizes({f: n * len(recipe.scoring.tasks) for f, n in sizes.items()}, f" at most (support.limit {per_task})")
    notes: list[str] = []
    if recipe.iterate is not None:
        notes += _local_elite_notes(method, grid, recipe.iterate.local_size)
    given = sum(e.reward is not None for e in entries)
    if given and recipe.scoring is not None:
        notes.append(
            f"population: {given} of {len(entries)} rewards are given in the recipe; `corpmerge run` takes them as fold-A "
            "(construct) rewards and does not score those entries"
        )
        if recipe.gate.enabled:
            notes.append(
                "gate: the given rewards may have been computed on examples that are now in the validate/probe folds (B/C), "
                "which biases the gate; score the population with corpmerge (drop the rewards) for an honest gate"
            )
    if recipe.scoring is not None and recipe.scoring_dtype != recipe.dtype:
        notes.append(dtype_mismatch_note(recipe))
    for note in notes:
        log.warning("%s", note)
    return Checked(recipe, method, grid, entries, base, tuple(notes))


def check_task_names(recipe: Recipe) -> None:
    """Every task named in ``scoring.tasks`` and ``evaluate.tasks`` is known to lm-eval with corpmerge's tasks and
    ``scoring.include_path`` (from the task index: no dataset is loaded)."""
    spec = recipe.scoring
    for field, names in (("scoring.tasks", spec.tasks), ("evaluate.tasks", recipe.evaluate and recipe.evaluate.tasks)):
        manager = task_manager(list(names or []), include_paths(spec), spec.task_args) if names else None
        missing = [name for name in names or [] if name not in manager.all_tasks]
        if missing:
            raise CorpmergeError(f"{field}: unknown task(s) {', '.join(missing)}; see `corpmerge tasks`, or set scoring.include_path to your task YAML folder")


def check_store(recipe: Recipe) -> None:
    """An existing score store must be the recipe's: its recorded noise scheme, task configuration and fold
    assignment (what can be known without weights) are compared, the file is only read."""
    path = store_path(recipe)
    if not path.is_file():
        return
    try:  # read-only, but not immutable: a live store's newest rows (its identity too) may still be in its WAL file
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10.0)) as db:
            stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise CorpmergeError(f"scoring.store: '{path}' is not a corpmerge score store ({first_line(exc)}); set scoring.store to a new path") from None
        return  # a store another run is creating or holds: the run checks it when it opens the store
    except sqlite3.Error:
        return
    suite = TaskSuite(recipe.scoring)
    expected = {
        "noise": recipe.noise,
        "tasks": suite.fingerprint(),
        "folds": fold_fingerprint(assign_folds(suite_counts(suite), recipe.scoring.support, suite.cluster_labels())),
    }
    for key, value in expected.items():
        if key in stored and stored[key] != value:
            resume = f"add `noise: {stored[key]}` to the recipe to resume it, or " if key == "noise" else ""
            raise CorpmergeError(
                f"{path}: this score store was made for a different {IDENTITY_LABELS[key]} ({stored[key]} ≠ {value}); "
                f"{resume}set scoring.store (or output.work_dir) to a new path, or delete the file to start over"
            )


def dtype_mismatch_note(recipe: Recipe) -> str:
    """One line: the gate scores a model in another dtype than the one written."""
    return (
        f"scoring.dtype: models are scored in {recipe.scoring_dtype} but written in {recipe.dtype}, so the gate does not "
        f"validate the bits that ship; drop scoring.dtype (or set it to {recipe.dtype}) to score what is written"
    )


def elite_count(size: int, quantile: float) -> int:
    """|E| of ``size`` distinct rewards at ``quantile`` (linear interpolation): size − ⌈q·(size − 1)⌉."""
    return size - math.ceil(quantile * (size - 1) - 1e-9)


def _local_elite_notes(method: MergeMethod, grid: list[MethodParams], local_size: int) -> list[str]:
    """A note when a stage-2 local population gives fewer than ``MIN_LOCAL_ELITES`` elites at some grid quantile."""
    quantiles = {q for p in grid if (q := method.elite_quantile(p)) is not None}
    if not quantiles or elite_count(local_size, max(quantiles)) >= MIN_LOCAL_ELITES:
        return []
    q = max(quantiles)
    needed = local_size
    while elite_count(needed, q) < MIN_LOCAL_ELITES:  # terminates: q < 1
        needed += 1
    return [
        f"iterate.local_size: {local_size} local perturbations give {elite_count(local_size, q)} elites at quantile {q:g}, "
        f"so a stage-2 step averages at most that many; raise iterate.local_size to at least {needed} for {MIN_LOCAL_ELITES} elites"
    ]
