"""Everything a scoring run holds open: base model, tasks, folds, store and scorer."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from corpmerge.dtypes import TORCH_DTYPES
from corpmerge.errors import CorpmergeError
from corpmerge.model_io import (
    BaseRef,
    Checkpoint,
    checkpoint_folder,
    ensure_checkpoint,
    load_tokenizer,
    model_skeleton,
    perturbed_names,
    resolve_base,
)
from corpmerge.noise import DEFAULT_SCHEME, check_scheme, fused_kernel, scheme
from corpmerge.recipe import Recipe
from corpmerge.rewards.sandbox import allow_unsandboxed, isolation_problem
from corpmerge.scoring.backends import Backend, engine_options, make_backend
from corpmerge.scoring.evaluator import Evaluator, LocalEvaluator, Request
from corpmerge.scoring.folds import Docs, assign_folds, check_gate_fold_sizes, count, fold_fingerprint
from corpmerge.scoring.lmeval import TaskSuite, code_tasks, quiet_third_party
from corpmerge.scoring.memory import MemoryPlan, Shapes, plan
from corpmerge.scoring.ray_evaluator import Deadlines, RayEvaluator
from corpmerge.scoring.scorer import Scorer, base_fingerprint, scratch_bytes
from corpmerge.scoring.store import IDENTITY_LABELS, Scores, ScoreStore, form_identity, rank_identity
from corpmerge.scoring.theta0 import Theta0, free_device_bytes, pinned_block, place
from corpmerge.scoring.workers import Cluster, check_capacity, connect, driver_device, resources_per_worker, start_workers, stop_workers
from corpmerge.sizes import parse_size

log = logging.getLogger(__name__)


@dataclass
class Session:
    """The loaded base, tasks, folds and scorer; in the driver also the store and the evaluator (a Ray worker has neither)."""

    recipe: Recipe
    ref: BaseRef
    backend: Backend
    tokenizer: Any
    suite: TaskSuite
    folds: dict[str, Docs]
    store: ScoreStore | None
    scorer: Scorer
    theta0: Theta0
    identity: dict[str, str]
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
        """Run a batch of requests (the driver only): spread over the Ray workers when there are any."""
        return self.evaluator.run(requests, label)

    def scores(self, request: Request, what: str | None = None) -> Scores:
        """One request's scores; ``what`` names it in the progress line (default: its subject)."""
        return self.evaluate([request], f"evaluating {what or request.subject} on fold {request.fold}")[0]

    @property
    def model(self) -> torch.nn.Module | None:
        """The live HF module when the backend has one (tests and diagnostics; the writer never reads it)."""
        return getattr(self.backend, "model", None)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers, close the store, free the scorer, the backend and θ₀: the end of ``with open_session(…)``."""
        if self.evaluator is not None:
            self.evaluator.close()
        if self.store is not None:
            self.store.close()
        self.scorer.release()
        self.backend.close()
        self.theta0.close()


def check_code_isolation(recipe: Recipe) -> None:
    """Tasks whose YAML declares ``unsafe_code: true`` run model output: refuse them up front where the OS
    sandbox cannot be set up, unless opted out."""
    spec = recipe.scoring
    allow_unsandboxed(spec.allow_unsandboxed_code)
    if spec.allow_unsandboxed_code:
        return
    places = [("scoring.tasks", spec.tasks)] + ([("evaluate.tasks", recipe.evaluate.tasks)] if recipe.evaluate and recipe.evaluate.tasks else [])
    for where, names in places:
        code = code_tasks(spec, names)
        problem = isolation_problem() if code else None
        if problem:
            raise CorpmergeError(
                f"{where}: {', '.join(code)} runs model-written code (unsafe_code: true in its task YAML), and the OS sandbox "
                f"is not available here ({problem}); run as root on Linux, or set scoring.allow_unsandboxed_code: true "
                "to run it without isolation (unsafe)"
            )


def suite_counts(suite: TaskSuite) -> dict[str, int]:
    return {name: suite.doc_count(name) for name in suite.tasks}


def memory_budget(setting: int | str | None, model_bytes: int, processes_on_host: int = 1, device_free: int | None = None) -> int:
    """Bytes for materialised updates on the scoring device: the recipe's ``scoring.memory_budget``, else
    min(8 × model, ½ of what is free there): the accelerator's free memory (``device_free``), or
    the host's free RAM ÷ the processes that may share this host (the driver and its workers)."""
    if setting is not None:
        return parse_size(setting)
    if device_free is not None:
        return int(min(8 * model_bytes, device_free // 2))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 2 * model_bytes
    return int(min(8 * model_bytes, free // 2 // max(1, processes_on_host)))


def store_path(recipe: Recipe) -> Path:
    assert recipe.scoring is not None
    return Path(recipe.scoring.store) if recipe.scoring.store else recipe.output.work_path / "scores.sqlite"


def use_prefetch(setting: bool | None, device_type: str, noise_scheme: str) -> bool:
    """``scoring.prefetch``, or by default: on when the noise is drawn on the host for an accelerator (the legacy scheme);
    off on the CPU (where the draw and the evaluation share its cores) and when the scheme draws on the device."""
    return setting if setting is not None else device_type != "cpu" and not scheme(noise_scheme).on_device


def memory_plan(recipe: Recipe, skeleton: torch.nn.Module, host: dict[str, torch.Tensor], device: torch.device) -> MemoryPlan:
    """The scoring device's plan , before the backend is built: on an accelerator whose size torch
    can tell; else (the host, a device that cannot say) θ₀ is placed as it fits."""
    assert recipe.scoring is not None
    spec = recipe.scoring
    shapes = Shapes(
        model_params=sum(p.numel() for p in skeleton.parameters()),
        perturbed=[t.numel() for t in host.values()],
        stored_bytes=sum(t.numel() * t.element_size() for t in host.values()),
        stored_element=max((t.element_size() for t in host.values()), default=4),
        scoring_element=TORCH_DTYPES[recipe.scoring_dtype].itemsize,
    )
    free, total = (int(b) for b in torch.cuda.mem_get_info(device)) if device.type == "cuda" else (None, None)
    share = spec.model_args.get("gpu_memory_utilization")
    return plan(
        shapes,
        total=total,
        free=free,
        vllm=spec.backend == "vllm",
        fused=recipe.noise == DEFAULT_SCHEME and fused_kernel(device.type) == "triton",
        tensor_parallel=int(spec.model_args.get("tensor_parallel_size", 1)),
        engine_share=float(share) if share is not None else None,
        cache_setting=parse_size(spec.memory_budget) if spec.memory_budget is not None else None,
    )


def scoring_device() -> torch.device:
    """This process's scoring device: its (first visible) GPU, else the CPU. A Ray worker sees only the GPUs Ray gave it."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def open_session(recipe: Recipe, base: BaseRef | None = None) -> Session:
    """The driver's session: load the base once, build the support tasks and folds, open (or resume) the store, and
    start the Ray workers when ``scoring.workers`` asks for them (a cluster too small stops the run before any loading).

    ``base``: ``recipe.base_model`` as the command resolved it (None: resolved here). Use it as ``with open_session(…) as session:``.
    """
    if recipe.scoring is None:
        raise CorpmergeError("scoring: this command needs a `scoring:` section (lm-eval tasks to score the population on)")
    prepare_scoring(recipe)
    cluster = connect_for(recipe) if recipe.scoring.workers else None
    try:
        device = driver_device(scoring_device(), engine_ranks(recipe)) if cluster else scoring_device()
        return _load(recipe, base, device, cluster, driver=True)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise


def open_worker_session(recipe: Recipe) -> Session:
    """A Ray worker's session: the base on this actor's device (the GPU Ray assigns it, else the CPU), no store."""
    prepare_scoring(recipe)
    return _load(recipe, None, scoring_device(), None, driver=False)


def prepare_scoring(recipe: Recipe) -> None:
    """Third-party logging quietened, and model-written code refused where it cannot be isolated."""
    quiet_third_party(verbose=logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG))
    check_code_isolation(recipe)


def _load(recipe: Recipe, base: BaseRef | None, device: torch.device, cluster: Cluster | None, driver: bool) -> Session:
    ref = ensure_checkpoint(base or resolve_base(recipe.base_model))
    folder = checkpoint_folder(ref)
    tokenizer = load_tokenizer(ref)
    if tokenizer is None:
        raise CorpmergeError(f"base_model: '{recipe.base_model}' has no tokenizer, which scoring needs")
    skeleton = model_skeleton(BaseRef(str(folder)))
    names = perturbed_names(skeleton, recipe.perturb, recipe.rank)
    host = read_tensors(Checkpoint(folder), names)
    spec = recipe.scoring
    memory = memory_plan(recipe, skeleton, host, device)
    for line in memory.lines():
        log.info(line)
    model_args = {**engine_options(spec.backend, names, recipe.rank), **spec.model_args}  # vllm at rank r: LoRA batches
    if memory.engine_share is not None:
        model_args["gpu_memory_utilization"] = memory.engine_share  # decided before the engine sizes its KV cache
    log.info("loading base %s (%s backend, %s on %s)", recipe.base_model, spec.backend, recipe.scoring_dtype, device)
    backend = make_backend(
        spec.backend,
        checkpoint=folder,
        tokenizer=tokenizer,
        device=device,
        dtype=TORCH_DTYPES[recipe.scoring_dtype],
        model_args=model_args,
        batch_size=spec.batch_size,
    )
    if recipe.adapter_output:  # the gate scores what ships: an adapter through adapters, full weights as written (hf only)
        backend.use_adapters()
    suite = TaskSuite(spec)
    folds = assign_folds(suite_counts(suite), spec.support, suite.cluster_labels())
    identity = {
        "rank": rank_identity(recipe.rank),  # first: at another rank the perturbed set, so the base fingerprint, differs too
        "form": form_identity(recipe.adapter_output),
        "base": base_fingerprint(host),
        "tasks": suite.fingerprint(),
        "folds": fold_fingerprint(folds),
        "noise": recipe.noise,
        "perturb": hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest(),
        "scoring": f"{backend.kind} backend, {recipe.scoring_dtype} on {backend.device_type}",
    }
    if recipe.gate.enabled:
        check_gate_fold_sizes(
            {f: count(folds[f]) for f in ("B", "C")}, f" ({', '.join(f'{t}: {n} support docs' for t, n in sorted(suite_counts(suite).items()))})"
        )
    pool = start_pool(recipe, identity, cluster) if cluster is not None else None
    try:
        store = ScoreStore(store_path(recipe), pool.identity if pool else identity) if driver else None
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    log.info(
        "support: %d examples (A %d / B %d / C %d); store %s",
        sum(count(d) for d in folds.values()),
        count(folds["A"]),
        count(folds["B"]),
        count(folds["C"]),
        store.path if store is not None else "in the driver",
    )
    check_scheme(recipe.noise, backend.device.type)  # the scoring device draws the reference bits, or the run stops here
    if memory.total is not None:  # an accelerator whose size is known: the plan decides
        theta0 = Theta0({n: t.to(backend.device) for n, t in host.items()}, "device") if memory.theta0 else pinned_block(host)
        budget = memory.cache
    else:
        theta0 = place(host, backend.device, reserve=scratch_bytes(host))
        budget = memory_budget(spec.memory_budget, 4 * sum(t.numel() for t in host.values()), 1 + spec.workers, free_device_bytes(backend.device))
    log.info("θ₀ on the %s; noise %s drawn on the %s", theta0.where, recipe.noise, backend.device if scheme(recipe.noise).on_device else "host")
    prefetch = use_prefetch(spec.prefetch, backend.device_type, recipe.noise)
    scorer = Scorer(backend, theta0.tensors, suite, budget, prefetch=prefetch, scheme=recipe.noise, rank=recipe.rank)
    session = Session(recipe, ref, backend, tokenizer, suite, folds, store, scorer, theta0, identity)
    if pool is not None:
        deadlines = Deadlines(spec.stall_factor, spec.unit_timeout)
        session.evaluator = RayEvaluator(scorer, store, session.suites, pool.actors, pool.cluster, deadlines, spec.worker_restarts, pool.identity == identity)
    elif driver:
        session.evaluator = LocalEvaluator(scorer, store, session.suites)
    return session


@dataclass
class Pool:
    """A run's Ray workers, their cluster, and the store identity of what they score."""

    actors: list[Any]
    cluster: Cluster
    identity: dict[str, str]

    def close(self) -> None:
        stop_workers(self.actors)
        self.cluster.close()


def engine_ranks(recipe: Recipe) -> int:
    """The GPUs one scoring engine takes: vLLM's ``tensor_parallel_size``, else 1."""
    assert recipe.scoring is not None
    return int(recipe.scoring.model_args.get("tensor_parallel_size", 1)) if recipe.scoring.backend == "vllm" else 1


def connect_for(recipe: Recipe) -> Cluster:
    """The run's Ray cluster, checked to hold ``scoring.workers`` workers; the driver keeps its engine's GPUs."""
    cluster = connect(driver_gpus=engine_ranks(recipe))
    try:
        check_capacity(recipe.scoring.workers, resources_per_worker(recipe))
    except BaseException:
        cluster.close()
        raise
    return cluster


def start_pool(recipe: Recipe, identity: dict[str, str], cluster: Cluster) -> Pool:
    """``scoring.workers`` Ray actors that report the driver's identity (the scoring device may differ: then the store
    records theirs, and the driver does not evaluate). The caller closes ``cluster`` on failure."""
    import ray

    pool = Pool(start_workers(recipe, recipe.scoring.workers), cluster, identity)
    theirs = ray.get([actor.identity.remote() for actor in pool.actors])
    for k, other in enumerate(theirs):
        differing = [key for key in identity if key != "scoring" and other.get(key) != identity[key]]
        if differing or other["scoring"] != theirs[0]["scoring"]:
            key = differing[0] if differing else "scoring"
            mine = identity[key] if differing else theirs[0]["scoring"]
            stop_workers(pool.actors)
            raise CorpmergeError(
                f"scoring.workers: worker {k + 1} sees a different {IDENTITY_LABELS.get(key, key)} than this process "
                f"({other.get(key)} ≠ {mine}); every node needs the same base model, tasks and corpmerge"
            )
    pool.identity = {**identity, "scoring": theirs[0]["scoring"]}
    log.info("%d Ray workers ready (%s)%s", len(pool.actors), pool.identity["scoring"], "" if pool.identity == identity else "; this process does not evaluate")
    return pool


def read_tensors(checkpoint: Checkpoint, names: list[str]) -> dict[str, torch.Tensor]:
    """θ₀ of the perturbed parameters, from the checkpoint files (the bits the writer starts from)."""
    missing = [name for name in names if name not in checkpoint]
    if missing:
        raise CorpmergeError(
            f"base_model: the checkpoint has no tensor for parameter '{missing[0]}' ({len(missing)} missing); "
            "corpmerge reads θ₀ from the checkpoint's safetensors files, whose names must match the model's parameters"
        )
    return {name: checkpoint.tensor(name) for name in names}
