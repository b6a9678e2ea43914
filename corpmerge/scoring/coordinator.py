"""Many processes, one coordinator: rank 0 owns the store and hands out units to whichever process is free.

Rank 0 runs the pipeline and takes every decision; the other ranks only evaluate. Messages travel
as pickled objects (a size tensor, then the bytes) over a gloo process group made for them at
startup (``agree_on_startup``), also when the launcher's group is NCCL: the messages are CPU
tensors. During a batch, rank 0 keeps one thread per worker that sends it a unit, waits for the
result and sends the next unit the moment the worker is free; rank 0's own thread saves the
results into the store and evaluates units itself while every worker is busy. Units go out
largest first (by examples), so a large unit does not start last. (A posted gloo ``irecv``
never reports completion to ``is_completed()`` before ``wait()`` is called, so the waiting is
done by blocking receives in those threads.)

Only rank 0 opens the store: no shared filesystem is needed, and a killed run resumes from rank
0's store (a unit in flight when a process died is simply missing and is handed out again after
the relaunch). A worker whose process dies closes its connection: rank 0's receive raises at
once, rank 0 saves what the other workers finish, stops them and exits with one line (under
``torchrun``/``accelerate launch`` the launcher stops every process anyway and, with
``--max-restarts``, relaunches; the relaunch resumes from the store). Waits on the message group
have a long timeout (``CHANNEL_TIMEOUT``) because workers wait for rank 0 while it alone merges
or writes a large model; a dead process is noticed by its closed connection, not by a timeout.

Messages are trusted: every rank is a process of the same launch.
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from collections import deque
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from corpmerge.errors import CorpmergeError, first_line, log_traceback, traceback_text
from corpmerge.progress import task
from corpmerge.scoring.evaluator import Request, Unit, collect, plan_units
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import Scorer
from corpmerge.scoring.store import Scores, ScoreStore

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT = timedelta(hours=24)
_channel: Any = None


def channel() -> Any:
    """The gloo process group the coordinator's messages travel on (made by ``agree_on_startup``)."""
    if _channel is None:
        raise RuntimeError("the coordinator's process group does not exist yet: every rank calls agree_on_startup first")
    return _channel


def pack(obj: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)


def send_packed(data: torch.Tensor, dst: int) -> None:
    dist.send(torch.tensor([data.numel()], dtype=torch.int64), dst, group=channel())
    dist.send(data, dst, group=channel())


def send(obj: Any, dst: int) -> None:
    send_packed(pack(obj), dst)


def recv(src: int) -> Any:
    size = torch.empty(1, dtype=torch.int64)
    dist.recv(size, src, group=channel())
    data = torch.empty(int(size.item()), dtype=torch.uint8)
    dist.recv(data, src, group=channel())
    return pickle.loads(data.numpy().tobytes())


class Coordinator:
    """Rank 0's evaluator: units to free workers (and to itself), results into the store."""

    def __init__(self, scorer: Scorer, store: ScoreStore, suites: Callable[[str], TaskSuite], size: int):
        self.scorer, self.store, self.suites = scorer, store, suites
        self.workers = list(range(1, size))
        self.busy_s = {rank: 0.0 for rank in range(size)}
        self.units_done = {rank: 0 for rank in range(size)}
        self.history: list[tuple[int, str, str, int, float]] = []  # (rank, subject, fold, examples, busy seconds)
        self.batch_s = 0.0  # wall time spent in batches that had units to evaluate
        self.lost: dict[int, str] = {}  # workers whose connection failed: no more messages to them
        self.started = time.perf_counter()

    def run(self, requests: Sequence[Request], label: str) -> list[Scores]:
        # largest units first, so a large one does not start last while the others idle; the sort is
        # stable, so units of equal size keep the pipeline's order (e.g. α-siblings next to each other)
        units = deque(sorted(plan_units(self.store, requests), key=lambda u: -sum(len(ids) for ids in u.docs.values())))
        if units:
            if self.lost:
                raise CorpmergeError(f"rank {min(self.lost)} is gone ({self.lost[min(self.lost)]}); run the same command again to continue")
            start = time.perf_counter()
            try:
                with task(label, len(units)) as advance:
                    self._deal(units, requests, advance)
            finally:
                self.batch_s += time.perf_counter() - start
        return collect(self.store, requests)

    def _deal(self, units: deque[Unit], requests: Sequence[Request], advance: Callable[..., None]) -> None:
        done: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        feeders = [
            threading.Thread(target=self._feed, args=(worker, units, done, stop), name=f"corpmerge-rank-{worker}", daemon=True)
            for worker in self.workers
        ]
        for feeder in feeders:
            feeder.start()
        failure: CorpmergeError | None = None
        try:
            while True:
                failure = failure or self._drain(done, requests, advance)
                if failure:
                    break
                try:
                    unit = units.popleft()  # every worker is busy (a free one takes the next unit at once): take one
                except IndexError:
                    break
                start = time.perf_counter()
                scores = self.scorer.evaluate(unit.update, unit.docs, self.suites(unit.suite))
                self._save(unit, scores, requests, 0, time.perf_counter() - start)
                advance()
            while not failure and any(f.is_alive() for f in feeders):
                failure = self._drain(done, requests, advance, wait=0.05)
        finally:
            stop.set()  # on any error: deal nothing more, collect what is out, keep what finished
            for feeder in feeders:
                while feeder.is_alive():
                    feeder.join(0.05)
                    failure = self._drain(done, requests, advance) or failure
            failure = self._drain(done, requests, advance) or failure
        if failure:
            raise failure

    def _feed(self, worker: int, units: deque[Unit], done: queue.SimpleQueue, stop: threading.Event) -> None:
        """One worker's thread: send it a unit, wait for the result, repeat while there are units (and no error)."""
        while not stop.is_set():
            try:
                unit = units.popleft()
            except IndexError:
                return
            try:
                data = pack(("unit", unit))
            except Exception as exc:  # nothing was sent: the worker is fine, the run stops on this unit
                done.put(("error", worker, unit, (f"cannot send {unit.subject}: {type(exc).__name__}: {first_line(exc)}", traceback_text(exc))))
                return
            try:
                send_packed(data, worker)
                reply = recv(worker)
            except Exception as exc:  # its process died or its connection broke: rank 0 stops the run
                log_traceback(f"rank {worker}'s connection", exc)
                done.put(("lost", worker, unit, first_line(exc)))
                return
            done.put((reply[0], worker, unit, reply[1:]))
            if reply[0] != "result":
                return

    def _drain(self, done: queue.SimpleQueue, requests: Sequence[Request], advance: Callable[..., None], wait: float = 0.0) -> CorpmergeError | None:
        """Save every result that arrived (waiting up to ``wait`` seconds for one); the first failure, if any."""
        failure = None
        while True:
            try:
                kind, worker, unit, payload = done.get(timeout=wait) if wait else done.get_nowait()
            except queue.Empty:
                return failure
            wait = 0.0
            if kind == "result":
                scores, seconds = payload
                self.scorer.evaluations += 1  # the report counts every process's evaluations
                self.scorer.examples_evaluated += len(scores)
                self._save(unit, scores, requests, worker, seconds)
                advance()
            elif kind == "lost":
                self.lost[worker] = payload
                failure = failure or CorpmergeError(
                    f"rank {worker} stopped while evaluating {unit.subject} ({payload}); finished units are in the store: "
                    "run the same command again to continue"
                )
            else:
                log_traceback(f"rank {worker}, evaluating {unit.subject}", payload[1] if len(payload) > 1 else None)
                failure = failure or CorpmergeError(f"rank {worker}: {payload[0]}")

    def _save(self, unit: Unit, scores: Scores, requests: Sequence[Request], rank: int, seconds: float) -> None:
        self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
        self.busy_s[rank] += seconds
        self.units_done[rank] += 1
        self.history.append((rank, unit.subject, unit.fold, len(scores), seconds))

    def close(self) -> None:
        """Release the workers (they return from ``serve``) and log each rank's share of the work."""
        for worker in self.workers:
            if worker in self.lost:
                continue
            try:
                send(("stop", None), worker)
            except Exception as exc:  # it died after its last unit; rank 0 still closes cleanly
                log.warning("rank %d: could not send stop (%s)", worker, first_line(exc))
        wall = time.perf_counter() - self.started
        for rank, busy in self.busy_s.items():
            idle = 1.0 - busy / self.batch_s if self.batch_s > 0 else 0.0
            examples = sum(n for r, _, _, n, _ in self.history if r == rank)
            log.info(
                "rank %d: %d units, %d examples, busy %.1f s of %.1f s in batches (%.0f%% idle), %.1f s since start",
                rank, self.units_done[rank], examples, busy, self.batch_s, 100 * idle, wall,
            )

    def utilisation(self) -> dict[int, float]:
        """Busy time ÷ wall time per rank since the coordinator started."""
        wall = max(1e-9, time.perf_counter() - self.started)
        return {rank: busy / wall for rank, busy in self.busy_s.items()}


def serve(scorer: Scorer, suites: Callable[[str], TaskSuite]) -> None:
    """A worker's loop: evaluate each unit rank 0 sends, send back its scores and busy seconds, until told to stop.

    A unit that fails is reported to rank 0 in one line; rank 0 then stops the run and sends "stop".
    """
    while True:
        kind, unit = _to_rank_0(recv, 0)
        if kind == "stop":
            return
        start = time.perf_counter()
        try:
            reply = ("result", scorer.evaluate(unit.update, unit.docs, suites(unit.suite)), time.perf_counter() - start)
        except Exception as exc:  # one line to rank 0, which stops the run and then sends "stop"; its log keeps the traceback
            reply = ("error", f"{type(exc).__name__}: {first_line(exc)}", traceback_text(exc))
        _to_rank_0(send, reply, 0)


def _to_rank_0(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:  # rank 0 is gone: it reported why (or the launcher stopped it)
        log_traceback("the connection to rank 0", exc)
        raise CorpmergeError(f"lost the connection to rank 0 ({first_line(exc)}); run the same command again to continue") from None


def agree(problem: str | None, size: int, detail: str | None = None) -> None:
    """Every rank says whether its step worked; any failure stops all of them with the same line naming the rank.

    ``detail`` is the traceback of an unexpected failure: every rank's goes to its own log (rank 0's file).
    """
    problems: list[tuple[str | None, str | None]] = [(None, None)] * size
    dist.all_gather_object(problems, (problem, detail))
    failed = [(rank, p, d) for rank, (p, d) in enumerate(problems) if p]
    for rank, _, text in failed:
        log_traceback(f"rank {rank}", text)
    if failed:
        rank, first, _ = failed[0]
        raise CorpmergeError(f"rank {rank} could not start: {first}")


def agree_on_startup(problem: str | None, size: int, detail: str | None = None) -> None:
    """Every rank says whether it could load the model and tasks; any failure stops all of them with one line.

    When all could, every rank joins the coordinator's message group (a collective call, so here,
    where every rank of the launch passes exactly once).
    """
    global _channel
    agree(problem, size, detail)
    _channel = dist.new_group(backend="gloo", timeout=CHANNEL_TIMEOUT)
