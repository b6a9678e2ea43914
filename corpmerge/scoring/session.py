"""Everything a scoring run holds open: base model, tasks, folds, store and scorer."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corpmerge.errors import CorpmergeError
from corpmerge.scoring.folds import Docs, assign_folds, check_gate_fold_sizes, count, fold_fingerprint
from corpmerge.scoring.lmeval import TaskSuite, quiet_third_party
from corpmerge.model_io import BaseRef, ensure_checkpoint, load_base, load_tokenizer, perturbed_names, resolve_base
from corpmerge.noise import SCHEME
from corpmerge.recipe import Recipe
from corpmerge.sizes import parse_size
from corpmerge.scoring.scorer import Scorer, base_fingerprint
from corpmerge.scoring.store import ScoreStore

log = logging.getLogger(__name__)


@dataclass
class Session:
    recipe: Recipe
    ref: BaseRef
    model: torch.nn.Module
    tokenizer: Any
    suite: TaskSuite
    folds: dict[str, Docs]
    store: ScoreStore
    scorer: Scorer

    def close(self) -> None:
        self.store.close()


def suite_counts(suite: TaskSuite) -> dict[str, int]:
    return {name: suite.doc_count(name) for name in suite.tasks}


def memory_budget(setting: int | str | None, model_bytes: int) -> int:
    """Bytes for materialised updates: the recipe's ``scoring.memory_budget``, else min(8 × model, ½ free RAM)."""
    if setting is not None:
        return parse_size(setting)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 2 * model_bytes
    return int(min(8 * model_bytes, free // 2))


def store_path(recipe: Recipe) -> Path:
    assert recipe.scoring is not None
    return Path(recipe.scoring.store) if recipe.scoring.store else recipe.output.work_path / "scores.sqlite"


def open_session(recipe: Recipe, device: torch.device | str | None = None) -> Session:
    """Load the base once, build the support tasks and folds, open (or resume) the store."""
    if recipe.scoring is None:
        raise CorpmergeError("scoring: this command needs a `scoring:` section (lm-eval tasks to score the population on)")
    quiet_third_party(verbose=logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG))
    ref = ensure_checkpoint(resolve_base(recipe.base_model))
    log.info("loading base %s", recipe.base_model)
    model = load_base(ref)
    if device:
        model.to(device)
    tokenizer = load_tokenizer(ref)
    if tokenizer is None:
        raise CorpmergeError(f"base_model: '{recipe.base_model}' has no tokenizer, which scoring needs")
    names = perturbed_names(model, recipe.perturb)
    suite = TaskSuite(recipe.scoring)
    folds = assign_folds(suite_counts(suite), recipe.scoring.support)
    identity = {
        "base": base_fingerprint(model, names),
        "tasks": suite.fingerprint(),
        "folds": fold_fingerprint(folds),
        "noise": SCHEME,
        "perturb": hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest(),
    }
    if recipe.gate.enabled:
        check_gate_fold_sizes({f: count(folds[f]) for f in ("B", "C")}, f" ({', '.join(f'{t}: {n} support docs' for t, n in sorted(suite_counts(suite).items()))})")
    store = ScoreStore(store_path(recipe), identity)
    log.info(
        "support: %d examples (A %d / B %d / C %d); store %s",
        sum(count(d) for d in folds.values()), count(folds["A"]), count(folds["B"]), count(folds["C"]), store.path,
    )
    model_bytes = 4 * sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    budget = memory_budget(recipe.scoring.memory_budget, model_bytes)
    scorer = Scorer(model, tokenizer, names, suite, store, recipe.scoring.batch_size, budget)
    return Session(recipe, ref, model, tokenizer, suite, folds, store, scorer)
