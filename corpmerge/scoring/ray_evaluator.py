"""The driver's evaluator with Ray workers: units to whichever worker is free, results into the store.

Units go out largest first (by examples); ``ray.wait`` returns the first result to come back, and
that worker gets the next unit. The driver evaluates a unit itself while every worker is busy (when
it scores on the same kind of device as they do). Faults, each told in one line:

* a worker that dies (SIGKILL, out of memory, its node gone): its unit goes back to the front of
  the queue; Ray restarts the worker (``scoring.worker_restarts`` times), and it takes units again
  once it has loaded the base;
* a worker that stops answering (SIGSTOP, a hung GPU): after max(``scoring.unit_timeout``,
  ``scoring.stall_factor`` × the unit's examples × the slowest measured cost per example) its unit
  goes back to the queue and the worker is killed with ``ray.kill`` (and so restarted);
* every worker gone: the run stops, finished units kept in the store; the same command resumes.

A unit's scores are stored once, when its answer comes back; an answer from a worker that was
given up on never arrives (its task fails with the worker). No unit is stored twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from corpmerge.errors import CorpmergeError, log_traceback
from corpmerge.progress import task
from corpmerge.scoring.evaluator import Request, Unit, collect, plan_units, unit_examples
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import Scorer
from corpmerge.scoring.store import Scores, ScoreStore
from corpmerge.scoring.workers import Cluster, enter_device, stop_workers, worker_failure

log = logging.getLogger(__name__)
WAIT_S = 1.0  # longest wait for an answer before deadlines and restarts are looked at again
PROBE_S = 0.5  # how often a restarting worker is asked whether it is back
HERE_POLL_S = 0.01  # while the driver evaluates a unit itself, how often the loop looks whether it is done


@dataclass(frozen=True)
class Deadlines:
    """When a unit out on a worker counts as stalled (``scoring.stall_factor``, ``scoring.unit_timeout``).

    A unit of n examples may take max(floor, factor × n × c) seconds, c being the largest cost per
    example measured so far in any process for the unit's suite (the slowest worker sets the pace);
    before anything was measured, the floor alone.
    """

    factor: float
    floor: float

    def seconds(self, examples: int, per_example: float | None) -> float:
        return self.floor if per_example is None else max(self.floor, self.factor * examples * per_example)


@dataclass
class Worker:
    """One actor and what it is doing: "idle", "busy" (``unit`` since ``started``), "restarting" or "gone"."""

    number: int
    actor: Any
    state: str = "idle"
    unit: Unit | None = None
    started: float = 0.0
    allowed: float = 0.0
    ref: Any = None  # the pending evaluate() or, while restarting, the pending pid() that says it is back
    probe_at: float = 0.0  # while restarting: when to ask again whether it is back
    units: int = 0
    busy_s: float = 0.0
    deaths: int = 0
    stalls: int = 0
    last_error: str = ""


@dataclass
class RayEvaluator:
    """The driver's evaluator: ``workers`` Ray actors, and the driver itself while they are all busy (``driver_evaluates``)."""

    scorer: Scorer
    store: ScoreStore
    suites: Callable[[str], TaskSuite]
    actors: list[Any]
    cluster: Cluster
    deadlines: Deadlines
    restarts: int = 2
    driver_evaluates: bool = True
    workers: list[Worker] = field(init=False)
    _cost: dict[str, float] = field(init=False, default_factory=dict)  # suite → slowest seconds per example
    _driver: list[float] = field(init=False, default_factory=lambda: [0, 0.0])  # units, busy seconds
    _here: tuple[Unit, Future] | None = field(init=False, default=None)  # the unit the driver evaluates now
    _remote: list[int] = field(init=False, default_factory=lambda: [0, 0])  # workers' evaluations and examples this batch
    _thread: ThreadPoolExecutor = field(init=False)  # the driver's own evaluations, on the scorer's device

    def __post_init__(self) -> None:
        self.workers = [Worker(k + 1, actor) for k, actor in enumerate(self.actors)]
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="corpmerge-driver", initializer=enter_device, initargs=(self.scorer.device,))

    def run(self, requests: Sequence[Request], label: str) -> list[Scores]:
        units = deque(sorted(plan_units(self.store, requests), key=lambda u: -unit_examples(u)))
        if units:
            with task(label, len(units)) as advance:
                self._deal(units, requests, advance)
        return collect(self.store, requests)

    def _deal(self, units: deque[Unit], requests: Sequence[Request], advance: Callable[..., None]) -> None:
        try:
            self._loop(units, requests, advance)
        finally:
            if self._here is not None:  # a failure elsewhere: keep what the driver was evaluating
                try:
                    self._saved_here(requests)
                except Exception as exc:
                    log_traceback("the driver's own evaluation", exc)
            self.scorer.evaluations += self._remote[0]  # the driver's thread is done with the scorer now
            self.scorer.examples_evaluated += self._remote[1]
            self._remote = [0, 0]

    def _loop(self, units: deque[Unit], requests: Sequence[Request], advance: Callable[..., None]) -> None:
        import ray

        while units or self._busy() or self._here is not None:
            if not self._busy() and units and self._here is None and not self.driver_evaluates and not any(w.ref is not None for w in self.workers):
                time.sleep(min(PROBE_S, max(0.0, min(w.probe_at for w in self.workers) - time.monotonic())))
            for worker in self.workers:
                if worker.state == "idle" and units:
                    self._send(worker, units.popleft())
            if all(w.state == "gone" for w in self.workers):
                raise CorpmergeError(
                    "scoring.workers: every worker is gone ("
                    + "; ".join(f"worker {w.number}: {w.last_error or 'stopped'}" for w in self.workers)
                    + "); finished units are in the store: run the same command again to continue"
                )
            for worker in self.workers:
                if worker.state == "restarting" and worker.ref is None and time.monotonic() >= worker.probe_at:
                    worker.ref = worker.actor.pid.remote()
            pending = {w.ref: w for w in self.workers if w.ref is not None}
            if self._here is not None and self._here[1].done():
                self._saved_here(requests)
                advance()
            if units and self._here is None and self.driver_evaluates and not any(w.state == "idle" for w in self.workers):
                unit = units.popleft()  # on the driver's thread, so the loop goes on handing out units meanwhile
                self._here = (unit, self._thread.submit(self._evaluate_here, unit))
            wait = min(
                [WAIT_S if self._here is None else HERE_POLL_S]
                + [max(0.0, w.started + w.allowed - time.monotonic()) for w in self.workers if w.state == "busy"]
                + [max(0.0, w.probe_at - time.monotonic()) for w in self.workers if w.state == "restarting" and w.ref is None]
            )
            ready = []
            if pending:  # the first answer to come back, then every other one already there
                ready, rest = ray.wait(list(pending), num_returns=1, timeout=wait)
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0] if ready and rest else []
            for ref in ready:
                self._answer(pending[ref], ref, units, requests, advance)
            self._check_stalls(units)

    def _busy(self) -> bool:
        return any(w.state == "busy" for w in self.workers)

    def _send(self, worker: Worker, unit: Unit) -> None:
        per_example = self._cost.get(unit.suite)
        worker.state, worker.unit, worker.started = "busy", unit, time.monotonic()
        worker.allowed = self.deadlines.seconds(unit_examples(unit), per_example)
        worker.ref = worker.actor.evaluate.remote(unit)

    def _answer(self, worker: Worker, ref: Any, units: deque[Unit], requests: Sequence[Request], advance: Callable[..., None]) -> None:
        import ray

        worker.ref = None
        try:
            result = ray.get(ref)
        except ray.exceptions.ActorUnavailableError as exc:  # Ray is restarting it: a death, unless it was already counted
            if worker.state == "restarting":
                worker.probe_at = time.monotonic() + PROBE_S
            else:
                self._lost(worker, units, worker_failure(exc))
            return
        except ray.exceptions.RayActorError as exc:
            self._lost(worker, units, worker_failure(exc))
            return
        except ray.exceptions.RayTaskError as exc:  # the unit itself failed inside a healthy worker: the run stops on it
            log_traceback(f"worker {worker.number}", exc)
            subject = worker.unit.subject if worker.unit is not None else "its unit"
            raise CorpmergeError(f"worker {worker.number} failed on {subject}: {worker_failure(exc)}") from None
        if worker.state == "restarting":  # pid() answered: it is back, with the base loaded
            log.warning("worker %d is back (restart %d of at most %d)", worker.number, worker.deaths, self.restarts)
            worker.state = "idle"
            return
        scores, seconds = result
        unit = worker.unit
        self._remote[0] += 1  # the report counts every process's evaluations (added to the scorer's counts after the batch)
        self._remote[1] += len(scores)
        self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
        self._measure(unit, seconds)
        worker.state, worker.unit, worker.units, worker.busy_s = "idle", None, worker.units + 1, worker.busy_s + seconds
        advance()

    def _lost(self, worker: Worker, units: deque[Unit], why: str, said: bool = False) -> None:
        """A worker died (or was killed): its unit back to the front of the queue; wait for Ray's restart, if any is left."""
        if worker.unit is not None and worker.state == "busy":
            units.appendleft(worker.unit)
        worker.unit, worker.deaths, worker.last_error = None, worker.deaths + 1, why
        if worker.deaths > self.restarts:
            worker.state = "gone"
            log.warning("worker %d is gone (%s) and was restarted %d times already: it gets no more units", worker.number, why, self.restarts)
            return
        if not said:
            log.warning("worker %d died (%s); its unit goes back to the queue, and Ray restarts the worker", worker.number, why)
        worker.state, worker.ref, worker.probe_at = "restarting", None, time.monotonic() + PROBE_S

    def _check_stalls(self, units: deque[Unit]) -> None:
        import ray

        now = time.monotonic()
        for worker in self.workers:
            if worker.state == "busy" and now - worker.started > worker.allowed:
                worker.stalls += 1
                log.warning(
                    "worker %d stalled: no answer for %.0f s on %s (%d examples, allowed %.0f s: scoring.stall_factor × the measured "
                    "cost, at least scoring.unit_timeout); its unit goes to another worker and the worker is restarted",
                    worker.number,
                    now - worker.started,
                    worker.unit.subject,
                    unit_examples(worker.unit),
                    worker.allowed,
                )
                ray.kill(worker.actor, no_restart=False)
                worker.ref = None  # its answer, if any, is never read
                self._lost(worker, units, f"stalled for {now - worker.started:.0f} s", said=True)

    def _evaluate_here(self, unit: Unit) -> tuple[Scores, float]:
        """The driver's own evaluation (on its helper thread; only the loop's thread touches the store)."""
        start = time.perf_counter()
        scores = self.scorer.evaluate(unit.update, unit.docs, self.suites(unit.suite))
        return scores, time.perf_counter() - start

    def _saved_here(self, requests: Sequence[Request]) -> None:
        unit, future = self._here
        self._here = None
        scores, seconds = future.result()  # an error in the driver's own evaluation stops the run here
        self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
        self._measure(unit, seconds)
        self._driver[0] += 1
        self._driver[1] += seconds

    def _measure(self, unit: Unit, seconds: float) -> None:
        per_example = seconds / max(1, unit_examples(unit))
        self._cost[unit.suite] = max(self._cost.get(unit.suite, 0.0), per_example)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        for worker in self.workers:
            log.info("worker %d: %d units, busy %.1f s, %d deaths, %d stalls", worker.number, worker.units, worker.busy_s, worker.deaths, worker.stalls)
        log.info("driver: %d units, busy %.1f s", self._driver[0], self._driver[1])
        stop_workers([worker.actor for worker in self.workers])
        self.cluster.close()
