"""Many processes, one coordinator: rank 0 owns the store and hands out units to whichever process is free.

Rank 0 runs the pipeline and takes every decision; the other ranks only evaluate. Messages travel
over the launcher's process group (gloo on CPU, NCCL on GPUs) as pickled objects: a size tensor,
then the bytes. Rank 0 evaluates units itself while every worker is busy, polling the workers
between its own units, so no process waits while there is work. Only rank 0 opens the store:
no shared filesystem is needed, and a killed run resumes from rank 0's store (a unit in flight
when a process died is simply missing and is handed out again after the relaunch).

Messages are trusted: every rank is a process of the same launch.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from corpmerge.errors import CorpmergeError
from corpmerge.progress import task
from corpmerge.scoring.evaluator import Request, Unit, collect, plan_units
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import Scorer
from corpmerge.scoring.store import Scores, ScoreStore

log = logging.getLogger(__name__)

_POLL_S = 0.002


def send(obj: Any, dst: int) -> None:
    data = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
    dist.send(torch.tensor([data.numel()], dtype=torch.int64), dst)
    dist.send(data, dst)


def recv_payload(src: int, size: int) -> Any:
    data = torch.empty(size, dtype=torch.uint8)
    dist.recv(data, src)
    return pickle.loads(data.numpy().tobytes())


def recv(src: int) -> Any:
    size = torch.empty(1, dtype=torch.int64)
    dist.recv(size, src)
    return recv_payload(src, int(size.item()))


class _Pending:
    """A unit out at a worker, with the posted receive of its result's size."""

    def __init__(self, worker: int, unit: Unit):
        self.worker, self.unit = worker, unit
        self.size = torch.empty(1, dtype=torch.int64)
        self.handle = dist.irecv(self.size, worker)


class Coordinator:
    """Rank 0's evaluator: units to free workers (and to itself), results into the store."""

    def __init__(self, scorer: Scorer, store: ScoreStore, suites: Callable[[str], TaskSuite], size: int):
        self.scorer, self.store, self.suites = scorer, store, suites
        self.workers = list(range(1, size))
        self.busy_s = {rank: 0.0 for rank in range(size)}
        self.units_done = {rank: 0 for rank in range(size)}
        self.started = time.perf_counter()

    def run(self, requests: Sequence[Request], label: str) -> list[Scores]:
        units = deque(plan_units(self.store, requests))
        if units:
            with task(label, len(units)) as advance:
                self._deal(units, requests, advance)
        return collect(self.store, requests)

    def _deal(self, units: deque[Unit], requests: Sequence[Request], advance: Callable[..., None]) -> None:
        out: dict[int, tuple[_Pending, float]] = {}
        free = list(self.workers)
        while units or out:
            while free and units:
                worker, unit = free.pop(0), units.popleft()
                send(("unit", unit), worker)
                out[worker] = (_Pending(worker, unit), time.perf_counter())
            for worker, (pending, sent) in list(out.items()):
                if pending.handle.is_completed():
                    kind, payload = recv_payload(worker, int(pending.size.item()))
                    if kind == "error":
                        raise CorpmergeError(f"rank {worker}: {payload}")
                    self._save(pending.unit, payload, requests, worker, time.perf_counter() - sent)
                    del out[worker]
                    free.append(worker)
                    advance()
            if units and not free:  # every worker is busy: rank 0 takes a unit itself
                unit = units.popleft()
                start = time.perf_counter()
                scores = self.scorer.evaluate(unit.update, unit.docs, self.suites(unit.suite))
                self._save(unit, scores, requests, 0, time.perf_counter() - start)
                advance()
            elif out and not (units and free):
                time.sleep(_POLL_S)

    def _save(self, unit: Unit, scores: Scores, requests: Sequence[Request], rank: int, seconds: float) -> None:
        self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
        self.busy_s[rank] += seconds
        self.units_done[rank] += 1

    def close(self) -> None:
        """Release the workers (they return from ``serve``) and log each rank's share of the work."""
        for worker in self.workers:
            send(("stop", None), worker)
        wall = time.perf_counter() - self.started
        for rank, busy in self.busy_s.items():
            log.info("rank %d: %d units, busy %.1f s of %.1f s", rank, self.units_done[rank], busy, wall)

    def utilisation(self) -> dict[int, float]:
        """Busy time ÷ wall time per rank since the coordinator started."""
        wall = max(1e-9, time.perf_counter() - self.started)
        return {rank: busy / wall for rank, busy in self.busy_s.items()}


def serve(scorer: Scorer, suites: Callable[[str], TaskSuite]) -> None:
    """A worker's loop: evaluate each unit rank 0 sends, send back its scores, until told to stop."""
    while True:
        kind, unit = recv(0)
        if kind == "stop":
            return
        try:
            scores = scorer.evaluate(unit.update, unit.docs, suites(unit.suite))
        except Exception as exc:  # one line to rank 0, which stops the run; the worker ends too
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            send(("error", f"{type(exc).__name__}: {first}"), 0)
            return
        send(("result", scores), 0)


def agree_on_startup(problem: str | None, size: int) -> None:
    """Every rank says whether it could load the model and tasks; any failure stops all of them with one line."""
    problems: list[str | None] = [None] * size
    dist.all_gather_object(problems, problem)
    failed = [(rank, p) for rank, p in enumerate(problems) if p]
    if failed:
        rank, first = failed[0]
        raise CorpmergeError(f"rank {rank} could not start: {first}")
