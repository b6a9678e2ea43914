"""Everything a scoring run holds open: base model, tasks, folds, store and scorer."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corpmerge.errors import CorpmergeError
from corpmerge.scoring.folds import Docs, assign_folds, count, fold_fingerprint
from corpmerge.scoring.lmeval import TaskSuite, quiet_third_party
from corpmerge.model_io import BaseRef, ensure_checkpoint, load_base, load_tokenizer, perturbed_names, resolve_base
from corpmerge.noise import SCHEME
from corpmerge.recipe import Recipe
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
    folds = assign_folds({name: suite.doc_count(name) for name in suite.tasks}, recipe.scoring.support)
    identity = {
        "base": base_fingerprint(model, names),
        "tasks": suite.fingerprint(),
        "folds": fold_fingerprint(folds),
        "noise": SCHEME,
        "perturb": hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest(),
    }
    store = ScoreStore(store_path(recipe), identity)
    log.info(
        "support: %d examples (A %d / B %d / C %d); store %s",
        sum(count(d) for d in folds.values()), count(folds["A"]), count(folds["B"]), count(folds["C"]), store.path,
    )
    scorer = Scorer(model, tokenizer, names, suite, store, recipe.scoring.batch_size)
    return Session(recipe, ref, model, tokenizer, suite, folds, store, scorer)
