"""A recipe checked against everything short of loading weights: its entries, its method and its grid."""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from dataclasses import dataclass

import torch

from corpmerge.dtypes import TORCH_DTYPES
from corpmerge.errors import CorpmergeError, first_line
from corpmerge.methods import MergeMethod, MethodParams, get_method, method_names
from corpmerge.model_io import BaseRef, Checkpoint, checkpoint_folder, model_skeleton, perturbed_names, resolve_base
from corpmerge.noise import check_scheme
from corpmerge.population import Entry
from corpmerge.recipe import Recipe, SampledPopulation
from corpmerge.scoring.backends import RANK_ON_VLLM_WORKERS
from corpmerge.scoring.folds import assign_folds, check_gate_fold_sizes, fold_fingerprint
from corpmerge.scoring.lmeval import TaskSuite, include_paths, quiet_third_party, task_manager
from corpmerge.scoring.scorer import noise_bound
from corpmerge.scoring.session import check_code_isolation, store_path, suite_counts
from corpmerge.scoring.store import IDENTITY_LABELS, form_identity, rank_identity, with_optional_identity

log = logging.getLogger(__name__)

MIN_LOCAL_ELITES = 10  # below it a stage-2 step averages a handful of random local perturbations
SIGMA_NOTE = 1.0  # validate notes a σ at or above it: larger than the RMS of the weight matrices of the LLMs we know
TASKS_NOT_LOADED = "scoring.tasks: cannot load"  # how a task whose data does not load is reported (scoring.lmeval)
SIGMA_RMS_WARN = 3.0  # run/merge warn when σ exceeds this many times a perturbed tensor's RMS (docs/sizing.md)


@dataclass(frozen=True)
class Checked:
    """A recipe that passed every check short of loading weights."""

    recipe: Recipe
    method: MergeMethod
    grid: list[MethodParams]
    entries: list[Entry]
    base: BaseRef  # ``base_model`` resolved, once per command
    notes: tuple[str, ...] = ()  # what a user should know about how the recipe will be read (validate prints them)


def check_recipe(recipe: Recipe, *, needs_rewards: bool, base: BaseRef | None = None, log_notes: bool = True, data_optional: bool = False) -> Checked:
    """Cross-field checks shared by validate/merge/run (no weights are touched).

    ``base``: ``recipe.base_model`` as the command already resolved it (None: resolved here); carried as ``Checked.base``.
    ``log_notes``: log the notes as warnings (``validate`` prints them itself, once). ``data_optional``: tasks whose
    data cannot be loaded here (a Hub dataset offline) get a note instead of an error (``validate``); their splits
    and sizes are checked when a command that scores loads them.
    """
    check_scheme(recipe.noise)
    base = base or resolve_base(recipe.base_model)
    unloaded = None
    if recipe.rank is not None and recipe.scoring is not None and recipe.scoring.backend == "vllm" and recipe.scoring.workers:
        raise CorpmergeError(RANK_ON_VLLM_WORKERS)
    if recipe.scoring is not None:
        check_task_names(recipe)
        check_code_isolation(recipe)  # before any task's data is loaded, as the session does
        try:
            check_store(recipe, check_splits(recipe))
        except CorpmergeError as exc:
            if not (data_optional and str(exc).startswith(TASKS_NOT_LOADED)):
                raise
            unloaded = f"{exc}; so their splits and sizes were not checked here (`score` and `run` check them when they load the data)"
    method = get_method(recipe.merge_method)
    if recipe.adapter_output and not method.linear:
        linear = ", ".join(n for n in method_names() if get_method(n).linear)
        raise CorpmergeError(
            f"output.format: peft writes the merge as a LoRA adapter, a sum of the population's rank-r noise, and merge_method "
            f"'{method.name}' computes its update tensor by tensor (not such a sum, full rank); use one of {linear}, or output.format: full"
        )
    grid = method.grid(recipe.parameters)
    entries = recipe.entries()
    check_sigma_range(recipe, entries)
    check_ensemble_k(recipe, len(entries))
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
    notes: list[str] = [unloaded] if unloaded else []
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
    sigma = max(abs(e.sigma) for e in entries)
    if sigma >= SIGMA_NOTE:
        notes.append(
            f"population: σ = {sigma:g} is at least {SIGMA_NOTE:g}, larger than the RMS of the weight matrices of LLMs (≈ 0.01–0.1); "
            "`run` and `merge` compare σ with each tensor's RMS when they load the base (docs/sizing.md: choosing σ)"
        )
    for note in notes if log_notes else ():
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


def check_splits(recipe: Recipe) -> TaskSuite:
    """The support split and ``evaluate.split`` exist in every task (read from the tasks, as ``run`` reads them), the
    support split is not a test split, and the support examples fill folds A, B and C; returns the support suite."""
    spec = recipe.scoring
    quiet_third_party(verbose=logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG))  # as the session loads them
    try:
        suite = TaskSuite(spec)
    except CorpmergeError as exc:
        raise _named(exc, "scoring.support.split") from None
    folds = assign_folds(suite_counts(suite), spec.support, suite.cluster_labels())
    if recipe.gate.enabled:
        counts = ", ".join(f"{t}: {n} support docs" for t, n in sorted(suite_counts(suite).items()))
        check_gate_fold_sizes({f: sum(len(d) for d in folds[f].values()) for f in ("B", "C")}, f" ({counts})")
    if recipe.evaluate is not None:
        try:
            TaskSuite(spec, tasks=recipe.evaluate.tasks, split=recipe.evaluate.split)
        except CorpmergeError as exc:
            raise _named(exc, "evaluate.split") from None
    return suite


def _named(exc: CorpmergeError, field: str) -> CorpmergeError:
    """``exc`` with its line prefixed by the recipe field it is about (unless it names one already)."""
    line = str(exc)
    return exc if line.startswith(("scoring.", "evaluate.", "task ")) else CorpmergeError(f"{field}: {line}")


def check_sigma_range(recipe: Recipe, entries: list[Entry]) -> None:
    """σ·ε must be finite in every dtype the weights take: |σ| times a bound on |ε| (``noise_bound``: 10 at full rank) below the largest finite value of the
    output and scoring dtypes (a larger σ writes inf/NaN weights)."""
    sigma, bound = max(abs(e.sigma) for e in entries), noise_bound(recipe.rank)
    for dtype in dict.fromkeys([recipe.dtype, recipe.scoring_dtype]):
        top = torch.finfo(TORCH_DTYPES[dtype]).max
        if not sigma * bound < top:
            raise CorpmergeError(
                f"population: σ = {sigma:g} times noise values up to {bound:g} exceeds {dtype}'s largest finite value ({top:.3g}), "
                f"so the perturbed weights would be inf or NaN; use σ below {top / bound:.3g}, of the order of 1e-3 × the weights' RMS scale (docs/sizing.md)"
            )


def sigma_scale_warning(ref: BaseRef, recipe: Recipe, entries: list[Entry]) -> str | None:
    """One warning line when the largest |σ| exceeds ``SIGMA_RMS_WARN`` × the RMS √(Σθ²/n) of a perturbed tensor of the
    base checkpoint ``ref`` (read tensor by tensor, one pass); logged, and None when every tensor is larger."""
    folder = checkpoint_folder(ref)
    source = Checkpoint(folder)
    names = [name for name in perturbed_names(model_skeleton(BaseRef(str(folder))), recipe.perturb, recipe.rank) if name in source]
    sigma = max(abs(e.sigma) for e in entries)
    over: list[tuple[float, str, float]] = []
    for name in names:
        tensor = source.tensor(name)
        rms = float(torch.linalg.vector_norm(tensor, dtype=torch.float32)) / math.sqrt(max(tensor.numel(), 1))
        if rms > 0 and sigma > SIGMA_RMS_WARN * rms:
            over.append((sigma / rms, name, rms))
    if not over:
        return None
    ratio, name, rms = max(over)
    line = (
        f"population: σ = {sigma:g} is more than {SIGMA_RMS_WARN:g}× the RMS of {len(over)} of {len(names)} perturbed tensors "
        f"(largest ratio {ratio:.3g}×: '{name}', RMS {rms:.3g}), so the perturbation outweighs those weights; "
        "choose σ relative to the weights' RMS (docs/sizing.md: choosing σ)"
    )
    log.warning("%s", line)
    return line


def check_ensemble_k(recipe: Recipe, size: int) -> None:
    """A RandOpt top-K vote takes K distinct entries, so every ``evaluate.ensemble_k`` is at most the population's size."""
    ks = recipe.evaluate.ensemble_k if recipe.evaluate is not None else []
    if ks and max(ks) > size:
        raise CorpmergeError(f"evaluate.ensemble_k: a top-{max(ks)} vote needs {max(ks)} entries and the population has {size}; give values ≤ {size}")


def check_store(recipe: Recipe, suite: TaskSuite | None = None) -> None:
    """An existing score store must be the recipe's: its recorded noise scheme, task configuration and fold
    assignment (what can be known without weights) are compared, the file is only read. ``suite``: the support
    suite when already loaded."""
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
    suite = suite or TaskSuite(recipe.scoring)
    expected = {
        "noise": recipe.noise,
        "rank": rank_identity(recipe.rank),
        "form": form_identity(recipe.adapter_output),
        "tasks": suite.fingerprint(),
        "folds": fold_fingerprint(assign_folds(suite_counts(suite), recipe.scoring.support, suite.cluster_labels())),
    }
    stored = with_optional_identity(stored)
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
