"""Everything a scoring run holds open: base model, tasks, folds, store and scorer."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from corpmerge.errors import CorpmergeError, first_line
from corpmerge.scoring.folds import Docs, assign_folds, check_gate_fold_sizes, count, fold_fingerprint
from corpmerge.scoring.lmeval import TaskSuite, quiet_third_party
from corpmerge.model_io import BaseRef, ensure_checkpoint, load_base, load_tokenizer, perturbed_names, resolve_base
from corpmerge.noise import SCHEME
from corpmerge.recipe import Recipe
from corpmerge.rewards.sandbox import allow_unsandboxed, isolation_problem
from corpmerge.sizes import parse_size
from corpmerge.scoring.scorer import Scorer, base_fingerprint
from corpmerge.scoring.coordinator import Coordinator, Deadlines, agree_on_startup, serve
from corpmerge.scoring.distributed import World, current_world
from corpmerge.scoring.evaluator import Evaluator, LocalEvaluator, Request
from corpmerge.scoring.store import Scores, ScoreStore

log = logging.getLogger(__name__)


@dataclass
class Session:
    """The loaded base, tasks, folds and scorer; on rank 0 also the store and the evaluator that spreads work."""

    recipe: Recipe
    ref: BaseRef
    model: torch.nn.Module
    tokenizer: Any
    suite: TaskSuite
    folds: dict[str, Docs]
    store: ScoreStore | None
    scorer: Scorer
    world: World
    evaluator: Evaluator | None = None
    _evaluate_suite: TaskSuite | None = field(default=None, repr=False)

    def suites(self, key: str) -> TaskSuite:
        """The support suite, or the held-out ("evaluate") suite, built once on first use."""
        if key == "support":
            return self.suite
        if self._evaluate_suite is None:
            spec = self.recipe.evaluate
            self._evaluate_suite = TaskSuite(self.recipe.scoring, tasks=spec.tasks, split=spec.split)
        return self._evaluate_suite

    def evaluate(self, requests: Sequence[Request], label: str) -> list[Scores]:
        """Run a batch of requests (rank 0 only): spread over every process under a launcher."""
        return self.evaluator.run(requests, label)

    def scores(self, request: Request) -> Scores:
        return self.evaluate([request], f"evaluating {request.subject}")[0]

    def serve(self) -> None:
        """A worker's whole job: evaluate what rank 0 hands out until it says stop."""
        serve(self.scorer, self.suites)

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
        if self.store is not None:
            self.store.close()


CODE_TASKS = ("corpmerge_mbpp",)


def check_code_isolation(recipe: Recipe) -> None:
    """Code rewards run model output: refuse them up front where the OS sandbox cannot be set up, unless opted out."""
    allow_unsandboxed(recipe.scoring.allow_unsandboxed_code)
    tasks = set(recipe.scoring.tasks) | set((recipe.evaluate.tasks or []) if recipe.evaluate else [])
    if tasks & set(CODE_TASKS) and not recipe.scoring.allow_unsandboxed_code:
        problem = isolation_problem()
        if problem:
            raise CorpmergeError(
                f"scoring.tasks: {', '.join(sorted(tasks & set(CODE_TASKS)))} runs model-written code, and the OS sandbox "
                f"is not available here ({problem}); run as root on Linux, or set scoring.allow_unsandboxed_code: true "
                "to run it without isolation (unsafe)"
            )


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


def open_session(recipe: Recipe, world: World | None = None) -> Session:
    """Load the base once, build the support tasks and folds; on rank 0 open (or resume) the store.

    Under a launcher every rank loads the model and the tasks, then all agree that each could
    (one line naming the rank that could not, on every rank); only rank 0 opens the store.
    """
    world = world or current_world()
    if world.size == 1:
        return _open(recipe, world)
    try:
        session, problem = _open(recipe, world), None
    except Exception as exc:  # reported by every rank below, then the run stops cleanly
        session, problem = None, first_line(exc)
    try:
        agree_on_startup(problem, world.size)
    except CorpmergeError:
        if session is not None and session.store is not None:
            session.store.close()  # not session.close(): the workers are not serving yet
        raise
    return session


def _open(recipe: Recipe, world: World) -> Session:
    if recipe.scoring is None:
        raise CorpmergeError("scoring: this command needs a `scoring:` section (lm-eval tasks to score the population on)")
    quiet_third_party(verbose=logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG))
    check_code_isolation(recipe)
    ref = ensure_checkpoint(resolve_base(recipe.base_model))
    log.info("loading base %s", recipe.base_model)
    model = load_base(ref)
    model.to(world.device)
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
    store = ScoreStore(store_path(recipe), identity) if world.is_main else None
    log.info(
        "support: %d examples (A %d / B %d / C %d); store %s",
        sum(count(d) for d in folds.values()), count(folds["A"]), count(folds["B"]), count(folds["C"]),
        store.path if store is not None else f"on rank 0 (this is rank {world.rank})",
    )
    model_bytes = 4 * sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    budget = memory_budget(recipe.scoring.memory_budget, model_bytes)
    scorer = Scorer(model, tokenizer, names, suite, recipe.scoring.batch_size, budget)
    session = Session(recipe, ref, model, tokenizer, suite, folds, store, scorer, world)
    if world.is_main:
        session.evaluator = (
            LocalEvaluator(scorer, store, session.suites) if world.size == 1
            else Coordinator(scorer, store, session.suites, world.size, Deadlines(recipe.scoring.stall_factor, recipe.scoring.unit_timeout))
        )
    return session
