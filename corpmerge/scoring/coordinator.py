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

A worker that stops answering without dying (SIGSTOP, a GPU hang) is noticed by a deadline per
unit (``Deadlines``: ``scoring.stall_factor`` × the unit's examples × the slowest measured cost per
example, at least ``scoring.unit_timeout``): its unit goes back to the front of the deal, to the
next free process or rank 0 itself, and rank 0 says so in one line. Its thread stays blocked on
it; an answer that comes later is discarded (the unit is stored once, by whoever evaluated it
again) and the rank takes units again. When every worker has stalled the run stops in one line,
finished work kept. At the end each worker must acknowledge "stop" (a send to a worker stopped
while idle would succeed and leave its launcher waiting forever); one that stalled or does not
acknowledge is killed when it runs on rank 0's machine (identified by boot id, PID namespace, pid
and start time, gathered at startup) and named otherwise, so rank 0 and a one-machine launch end.

Messages are trusted: every rank is a process of the same launch.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from corpmerge.errors import CorpmergeError, first_line, log_traceback, traceback_text
from corpmerge.progress import task
from corpmerge.scoring.deal import Batch, Deadlines, Flight, unit_examples
from corpmerge.scoring.distributed import Peer
from corpmerge.scoring.evaluator import Request, Unit, collect, plan_units
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import Scorer
from corpmerge.scoring.store import Scores, ScoreStore

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT = timedelta(hours=24)
STOP_TIMEOUT_S = 30.0  # at close, an idle worker acknowledges "stop" in milliseconds; one that does not has stalled
_channel: Any = None
_peers: list[Peer] = []  # where every rank's process runs (gathered by agree_on_startup)


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


def send_packed_within(data: torch.Tensor, dst: int, timeout: timedelta) -> None:
    """``send_packed`` that raises when the receiver has not taken the message within ``timeout``."""
    dist.isend(torch.tensor([data.numel()], dtype=torch.int64), dst, group=channel()).wait(timeout)
    dist.isend(data, dst, group=channel()).wait(timeout)


def recv(src: int) -> Any:
    size = torch.empty(1, dtype=torch.int64)
    dist.recv(size, src, group=channel())
    data = torch.empty(int(size.item()), dtype=torch.uint8)
    dist.recv(data, src, group=channel())
    return pickle.loads(data.numpy().tobytes())


class Coordinator:
    """Rank 0's evaluator: units to free workers (and to itself), results into the store, stalled workers dealt around."""

    def __init__(self, scorer: Scorer, store: ScoreStore, suites: Callable[[str], TaskSuite], size: int, deadlines: Deadlines):
        self.scorer, self.store, self.suites, self.deadlines = scorer, store, suites, deadlines
        self.workers = list(range(1, size))
        self.busy_s = {rank: 0.0 for rank in range(size)}
        self.units_done = {rank: 0 for rank in range(size)}
        self.stalls = {rank: 0 for rank in range(size)}  # units given to another process after their deadline
        self.late = {rank: 0 for rank in range(size)}  # answers that came after that, discarded
        self.history: list[tuple[int, str, str, int, float]] = []  # (rank, subject, fold, examples, busy seconds)
        self.batch_s = 0.0  # wall time spent in batches that had units to evaluate
        self.lost: dict[int, str] = {}  # workers whose connection failed while they held a unit: the run stops
        self.dropped: dict[int, str] = {}  # stalled workers whose connection failed later: no more messages to them
        self.started = time.perf_counter()
        self._feeders: dict[int, tuple[threading.Thread, Batch]] = {}
        self._cost: dict[tuple[int, str], list[float]] = {}  # (rank, suite) → [seconds, examples]

    def run(self, requests: Sequence[Request], label: str) -> list[Scores]:
        # largest units first, so a large one does not start last while the others idle; the sort is
        # stable, so units of equal size keep the pipeline's order (e.g. α-siblings next to each other)
        units = sorted(plan_units(self.store, requests), key=lambda u: -unit_examples(u))
        if units:
            if self.lost:
                raise CorpmergeError(f"rank {min(self.lost)} is gone ({self.lost[min(self.lost)]}); run the same command again to continue")
            start = time.perf_counter()
            try:
                with task(label, len(units)) as advance:
                    self._deal(Batch(units), requests, advance)
            finally:
                self.batch_s += time.perf_counter() - start
        return collect(self.store, requests)

    def _deal(self, batch: Batch, requests: Sequence[Request], advance: Callable[..., None]) -> None:
        failure: CorpmergeError | None = None
        try:
            while batch.left and not failure:
                self._start_feeders(batch)
                failure = self._drain(batch, requests, advance) or self._check_stalls(batch)
                if failure or not batch.left:
                    break
                unit = batch.take(None, self._allowed)  # every worker is busy (a free one takes the next unit at once): take one
                if unit is None:
                    failure = self._drain(batch, requests, advance, wait=0.05)
                    continue
                start = time.perf_counter()
                scores = self.scorer.evaluate(unit.update, unit.docs, self.suites(unit.suite))
                failure = self._save(batch, unit, scores, requests, 0, time.perf_counter() - start)
                advance()
        finally:
            batch.stop.set()  # on any error: deal nothing more, collect what live workers hold, keep what finished
            while batch.busy():
                failure = self._drain(batch, requests, advance, wait=0.05) or failure
                failure = self._check_stalls(batch) or failure
            failure = self._drain(batch, requests, advance) or failure
        if failure:
            raise failure

    def _start_feeders(self, batch: Batch) -> None:
        """A feeding thread for every worker that has none (a stalled one keeps its blocked thread until it answers)."""
        if not batch.units:
            return
        for worker in self.workers:
            thread = self._feeders.get(worker, (None, None))[0]
            if worker in self.lost or worker in self.dropped or (thread is not None and thread.is_alive()):
                continue
            thread = threading.Thread(target=self._feed, args=(worker, batch), name=f"corpmerge-rank-{worker}", daemon=True)
            self._feeders[worker] = (thread, batch)
            thread.start()

    def _feed(self, worker: int, batch: Batch) -> None:
        """One worker's thread: send it a unit, wait for the result, repeat while the batch has units (and no error)."""
        while True:
            unit = batch.take(worker, self._allowed)
            if unit is None:
                return
            try:
                data = pack(("unit", unit))
            except Exception as exc:  # nothing was sent: the worker is fine, the run stops on this unit
                batch.land(worker)
                batch.done.put(("error", worker, unit, (f"cannot send {unit.subject}: {type(exc).__name__}: {first_line(exc)}", traceback_text(exc))))
                return
            try:
                send_packed(data, worker)
                reply = recv(worker)
            except Exception as exc:  # its process died or its connection broke
                log_traceback(f"rank {worker}'s connection", exc)
                if batch.land(worker).reclaimed:  # it had stalled: its unit is elsewhere, the run goes on without it
                    if worker not in self.dropped:  # (not killed by ``close``)
                        log.warning("rank %d, which had stalled, is gone (%s); it gets no more units", worker, first_line(exc))
                    self.dropped[worker] = first_line(exc)
                else:
                    batch.done.put(("lost", worker, unit, first_line(exc)))
                return
            flight = batch.land(worker)
            if flight.reclaimed:
                self.late[worker] += 1
                log.warning(
                    "rank %d answered %s after %.0f s, when it had already gone to another process: answer discarded%s",
                    worker,
                    unit.subject,
                    time.monotonic() - flight.started,
                    "" if batch.stop.is_set() else "; it takes units again",
                )
                continue
            batch.done.put((reply[0], worker, unit, reply[1:]))
            if reply[0] != "result":
                return

    def _check_stalls(self, batch: Batch) -> CorpmergeError | None:
        """Give overdue units to other processes; a failure when every worker has stalled (or is gone)."""
        for rank, flight in batch.overdue():
            self.stalls[rank] += 1
            log.warning(
                "rank %d stalled: no answer for %.0f s on %s (%d examples, allowed %.0f s: scoring.stall_factor × the measured "
                "cost, at least scoring.unit_timeout); its unit goes to another process and a late answer is discarded",
                rank,
                time.monotonic() - flight.started,
                flight.unit.subject,
                unit_examples(flight.unit),
                flight.allowed,
            )
        stuck = {rank: self._stuck(rank) for rank in self.workers}
        if not self.workers or not any(stuck.values()):
            return None
        if all(stuck[rank] is not None or rank in self.lost or rank in self.dropped for rank in self.workers):
            which = ", ".join(
                f"rank {rank} (no answer for {time.monotonic() - flight.started:.0f} s on {flight.unit.subject})"
                for rank, flight in stuck.items()
                if flight is not None
            )
            return CorpmergeError(
                f"every worker stalled: {which}; finished units are in the store: run the same command again to continue "
                "(raise scoring.unit_timeout if they were only slow)"
            )
        return None

    def _stuck(self, rank: int) -> Flight | None:
        """The unit ``rank`` stalled on, while it has not answered (in whichever batch it was dealt)."""
        thread, batch = self._feeders.get(rank, (None, None))
        return batch.stuck(rank) if thread is not None and thread.is_alive() else None

    def _allowed(self, unit: Unit) -> float:
        rates = [seconds / examples for (_, suite), (seconds, examples) in self._cost.items() if suite == unit.suite and examples]
        return self.deadlines.seconds(unit_examples(unit), max(rates) if rates else None)

    def _drain(self, batch: Batch, requests: Sequence[Request], advance: Callable[..., None], wait: float = 0.0) -> CorpmergeError | None:
        """Save every result that arrived (waiting up to ``wait`` seconds for one); the first failure, if any."""
        failure = None
        while True:
            try:
                kind, worker, unit, payload = batch.done.get(timeout=wait) if wait else batch.done.get_nowait()
            except queue.Empty:
                return failure
            wait = 0.0
            if kind == "result":
                scores, seconds = payload
                self.scorer.evaluations += 1  # the report counts every process's evaluations
                self.scorer.examples_evaluated += len(scores)
                failure = self._save(batch, unit, scores, requests, worker, seconds) or failure
                advance()
            elif kind == "lost":
                self.lost[worker] = payload
                failure = failure or CorpmergeError(
                    f"rank {worker} stopped while evaluating {unit.subject} ({payload}); finished units are in the store: "
                    "run the same command again to continue"
                )
            else:
                message, trace = payload
                log_traceback(f"rank {worker}, evaluating {unit.subject}", trace)
                failure = failure or CorpmergeError(f"rank {worker}: {message}")

    def _save(self, batch: Batch, unit: Unit, scores: Scores, requests: Sequence[Request], rank: int, seconds: float) -> CorpmergeError | None:
        """Store a unit's scores; a failing store (a full disk) is returned, so the workers' units are still collected."""
        try:
            self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
        except CorpmergeError as exc:
            return exc
        batch.left -= 1
        self.busy_s[rank] += seconds
        self.units_done[rank] += 1
        cost = self._cost.setdefault((rank, unit.suite), [0.0, 0.0])
        cost[0] += seconds
        cost[1] += len(scores)
        self.history.append((rank, unit.subject, unit.fold, len(scores), seconds))
        return None

    def close(self) -> None:
        """Release the workers (each acknowledges and returns from ``serve``) and log each rank's share of the work.

        A worker that stalled, or that does not acknowledge within min(unit_timeout, STOP_TIMEOUT_S), is not
        waited for: on this machine it is killed (the launcher would wait for it forever), elsewhere it is named.
        """
        unanswered = [w for w in self.workers if w not in self.lost and w not in self.dropped and self._stuck(w) is not None]
        told = [w for w in self.workers if w not in self.lost and w not in self.dropped and w not in unanswered]
        timeout = timedelta(seconds=min(self.deadlines.floor, STOP_TIMEOUT_S))
        for worker in told:
            try:
                send_packed_within(pack(("stop", None)), worker, timeout)
                ack = torch.zeros(1, dtype=torch.int64)
                dist.irecv(ack, worker, group=channel()).wait(timeout)
            except Exception as exc:  # it died after its last unit, or it stopped answering while idle
                log.warning("rank %d did not acknowledge the stop (%s)", worker, first_line(exc))
                unanswered.append(worker)
        for worker in unanswered:
            self.dropped.setdefault(worker, "stalled at the end of the run")
            if _end(worker):  # its connection closes: let the thread that waited for it see that before teardown
                thread = self._feeders.get(worker, (None, None))[0]
                if thread is not None:
                    thread.join(STOP_TIMEOUT_S)
        wall = time.perf_counter() - self.started
        for rank, busy in self.busy_s.items():
            idle = 1.0 - busy / self.batch_s if self.batch_s > 0 else 0.0
            examples = sum(n for r, _, _, n, _ in self.history if r == rank)
            stalled = f", stalled {self.stalls[rank]}× ({self.late[rank]} late answers discarded)" if self.stalls[rank] else ""
            log.info(
                "rank %d: %d units, %d examples, busy %.1f s of %.1f s in batches (%.0f%% idle), %.1f s since start%s",
                rank,
                self.units_done[rank],
                examples,
                busy,
                self.batch_s,
                100 * idle,
                wall,
                stalled,
            )

    def utilisation(self) -> dict[int, float]:
        """Busy time ÷ wall time per rank since the coordinator started."""
        wall = max(1e-9, time.perf_counter() - self.started)
        return {rank: busy / wall for rank, busy in self.busy_s.items()}


def _end(rank: int) -> bool:
    """A worker that cannot be told to stop: killed when it runs on this machine (and is still the same process),
    else named. Whether it was killed."""
    peer = _peers[rank] if rank < len(_peers) else None
    state = peer.state() if peer is not None else "gone"
    if state == "alive":
        os.kill(peer.pid, signal.SIGKILL)
        log.warning("rank %d (pid %d) stalled: killed it so that the launch can end", rank, peer.pid)
    elif state == "elsewhere":
        log.warning("rank %d (pid %d on %s) stalled and runs on another machine: stop it if its launcher waits for it", rank, peer.pid, peer.host)
    return state == "alive"


def serve(scorer: Scorer, suites: Callable[[str], TaskSuite]) -> None:
    """A worker's loop: evaluate each unit rank 0 sends, send back its scores and busy seconds, until told to stop.

    A unit that fails is reported to rank 0 in one line (its traceback goes to rank 0's log); rank 0
    then stops the run and sends "stop", which the worker acknowledges before it returns.
    """
    while True:
        kind, unit = _to_rank_0(recv, 0)
        if kind == "stop":
            _to_rank_0(dist.send, torch.ones(1, dtype=torch.int64), 0, channel())
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
    _first_failure(problems)


def _first_failure(problems: list[tuple[str | None, str | None]]) -> None:
    failed = [(rank, p, d) for rank, (p, d) in enumerate(problems) if p]
    for rank, _, text in failed:
        log_traceback(f"rank {rank}", text)
    if failed:
        rank, first, _ = failed[0]
        raise CorpmergeError(f"rank {rank} could not start: {first}")


def agree_on_startup(problem: str | None, size: int, detail: str | None = None) -> None:
    """Every rank says whether it could load the model and tasks (and where its process runs); any failure
    stops all of them with one line.

    When all could, every rank joins the coordinator's message group (a collective call, so here,
    where every rank of the launch passes exactly once).
    """
    global _channel, _peers
    reports: list[tuple[tuple[str | None, str | None], Peer] | None] = [None] * size
    dist.all_gather_object(reports, ((problem, detail), Peer.here()))
    _first_failure([p for p, _ in reports])
    _peers = [peer for _, peer in reports]
    _channel = dist.new_group(backend="gloo", timeout=CHANNEL_TIMEOUT)
