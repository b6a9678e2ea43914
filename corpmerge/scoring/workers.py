"""Workers as Ray actors: each loads the base on its own device and evaluates the units the driver hands it.

The ``corpmerge`` process is the driver: it keeps the store, racing, the gate and every decision
(``ray_evaluator``); a worker only evaluates. With ``RAY_ADDRESS`` set (Ray's convention) the
driver joins that cluster, otherwise it starts a local one for the run and stops it at the end.
Every worker loads the base itself (a Hub id, or a path that must exist on its node) and reports
its store identity (base fingerprint, tasks, folds, noise scheme, perturbed set, backend/dtype/
device), which must equal the driver's: scores from a worker are then exactly the scores the
driver would compute, because the noise and θ₀ + Δ are the same bits on every process.
Ray restarts a worker that dies, up to ``scoring.worker_restarts`` times; the driver kills
(and so restarts) one that stops answering.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from corpmerge.errors import CorpmergeError, first_line
from corpmerge.recipe import Recipe
from corpmerge.scoring.evaluator import Unit
from corpmerge.scoring.store import Scores

log = logging.getLogger(__name__)
OBJECT_STORE_BYTES = 256 << 20  # units and scores are small; no tensor travels through Ray


class ScoringWorker:
    """One backend on this actor's device (``ray.remote`` wraps it in ``start_workers``)."""

    def __init__(self, recipe: Recipe):
        from corpmerge.scoring.session import open_worker_session

        undo_ray_niceness()
        self.session = open_worker_session(recipe)

    def identity(self) -> dict[str, str]:
        return self.session.identity

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, unit: Unit) -> tuple[Scores, float]:
        """The unit's scores and the seconds it took (on the thread Ray runs it on, set to this actor's device first)."""
        enter_device(self.session.backend.device)
        start = time.perf_counter()
        scores = self.session.scorer.evaluate(unit.update, unit.docs, self.session.suites(unit.suite))
        return scores, time.perf_counter() - start


@dataclass
class Cluster:
    """The Ray cluster of a run: joined (``RAY_ADDRESS``) or started here, and so stopped here."""

    started: bool

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


def undo_ray_niceness() -> None:
    """Ray starts its workers at niceness 15 (``RAY_worker_niceness``), below the driver, which evaluates too: on a
    loaded host a worker then gets a small share of a core (CFS weight 36 against 1024 for niceness 0). Every thread of this worker goes back to niceness 0 where the OS permits it (root, CAP_SYS_NICE);
    otherwise one warning says how to start Ray."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current <= 0:
        return
    try:
        for thread in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(thread), 0)
    except PermissionError:
        log.warning(
            "this Ray worker runs at niceness %d, below the driver; start the cluster with RAY_worker_niceness=0 "
            "(e.g. RAY_worker_niceness=0 ray start …) so that workers are not starved on a busy host",
            current,
        )
    except (FileNotFoundError, ProcessLookupError):  # not Linux, or a thread that just ended
        pass


def connect(driver_gpus: int = 1) -> Cluster:
    """Join ``RAY_ADDRESS``'s cluster, or start a local one sized to this machine (no dashboard, bounded object store) that
    leaves the last ``driver_gpus`` GPUs to the driver (its engine's ``tensor_parallel_size``)."""
    try:
        import ray
    except ImportError:
        raise CorpmergeError("scoring.workers: Ray is not installed; pip install 'corpmerge[ray]' (or set scoring.workers: 0)") from None
    if ray.is_initialized():
        return Cluster(started=False)
    address = os.environ.get("RAY_ADDRESS")
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING, "namespace": "corpmerge"}
    try:
        if address:
            ray.init(address=address, **quiet)
            return Cluster(started=False)
        gpus = max(0, torch.cuda.device_count() - driver_gpus)  # the last GPUs stay the driver's (``driver_device``)
        os.environ.setdefault("RAY_worker_niceness", "0")  # the local cluster's workers at the driver's priority
        ray.init(address="local", num_cpus=os.cpu_count() or 1, num_gpus=gpus, object_store_memory=OBJECT_STORE_BYTES, _temp_dir=ray_temp_dir(), **quiet)
    except Exception as exc:  # Ray's own connection and start-up errors
        raise CorpmergeError(
            f"scoring.workers: cannot {'join the Ray cluster at ' + address if address else 'start a local Ray cluster'} ({first_line(exc)})"
        ) from None
    return Cluster(started=True)


def ray_temp_dir() -> str | None:
    """Where a local cluster keeps its sockets: Ray's default under TMPDIR, unless that path is too long for a Unix
    socket (107 bytes with Ray's ≈ 70-byte suffix); then /tmp/ray."""
    return None if len(tempfile.gettempdir()) <= 32 or not os.path.isdir("/tmp") else "/tmp/ray"


def enter_device(device: torch.device) -> None:
    """The calling thread's current device ← ``device``. CUDA keeps one per thread and a new thread starts on GPU 0,
    while a model's kernels (vLLM's Triton kernels among them) launch on the current device: every thread that
    evaluates a model calls this first."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def resources_per_worker(recipe: Recipe) -> dict[str, float]:
    """A worker's share: the GPUs of one engine (``tensor_parallel_size``) on a cluster with GPUs, or when this process
    scores on a GPU (a cluster without enough of them is then refused by ``check_capacity``: workers on the CPU would
    have another identity than the driver, and the GPU would idle); else one CPU."""
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0 or torch.cuda.is_available():
        return {"num_gpus": float(recipe.scoring.model_args.get("tensor_parallel_size", 1)), "num_cpus": 1.0}
    return {"num_cpus": 1.0}


def check_capacity(count: int, need: dict[str, float]) -> None:
    """``count`` workers must fit the cluster; one line naming the field and what the cluster has otherwise."""
    import ray

    have = ray.cluster_resources()
    for key, label in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        if key in need and count * need[key] > have.get(label, 0):
            held = ", ".join(f"{have.get(k, 0):g} {k}" for k in ("GPU", "CPU"))
            raise CorpmergeError(
                f"scoring.workers: {count} workers need {count * need[key]:g} {label}, and the Ray cluster has {held}; "
                f"use at most {int(have.get(label, 0) // need[key])} workers (or add nodes)"
            )


def start_workers(recipe: Recipe, count: int) -> list[Any]:
    """``count`` actors, each loading the base; returned once every one has (or a one-line error naming the first that could not)."""
    import ray

    need = resources_per_worker(recipe)
    check_capacity(count, need)
    actor = ray.remote(ScoringWorker)
    options = {**need, "max_restarts": recipe.scoring.worker_restarts, "max_task_retries": 0}
    workers = [actor.options(**options).remote(recipe) for _ in range(count)]
    for k, worker in enumerate(workers):
        try:
            ray.get(worker.pid.remote())
        except Exception as exc:
            stop_workers(workers)
            raise CorpmergeError(f"scoring.workers: worker {k + 1} could not start ({worker_failure(exc)})") from None
    return workers


def stop_workers(actors: list[Any]) -> None:
    """End ``actors`` for good (no restart), while this process is still connected to their cluster."""
    import ray

    if ray.is_initialized():
        for actor in actors:
            ray.kill(actor, no_restart=True)


def worker_failure(exc: BaseException) -> str:
    """The one line that says what went wrong inside an actor. Ray wraps it in its own errors: a failed ``__init__``
    arrives as text ending with the actor's traceback, whose last line is the error (corpmerge's own without its type)."""
    if getattr(exc, "_actor_init_failed", False) and getattr(exc, "error_msg", ""):
        last = [line for line in exc.error_msg.splitlines() if line.strip()][-1].strip()
        kind, _, message = last.partition(": ")
        return message if kind.rsplit(".", 1)[-1] == "CorpmergeError" else last
    cause = getattr(exc, "cause", None) or getattr(exc, "as_instanceof_cause", lambda: None)()
    text = first_line(cause) if isinstance(cause, BaseException) else first_line(exc)
    return text.removeprefix("ray::ScoringWorker.__init__() ").strip()


def driver_device(device: torch.device, ranks: int = 1) -> torch.device:
    """Where the driver scores when it has workers: on a GPU machine the first of the last ``ranks`` GPUs (an engine with
    ``tensor_parallel_size`` = ranks takes them from there on), which a local cluster leaves out of the workers' (Ray
    hands them GPUs 0 … n − ranks − 1); elsewhere its usual device."""
    return torch.device(f"cuda:{max(0, torch.cuda.device_count() - ranks)}") if device.type == "cuda" else device
