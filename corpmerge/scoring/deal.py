"""One batch of units on their way to the workers: the queue, the units out (flights) and their deadlines.

Shared by rank 0's thread and its per-worker threads (``corpmerge.scoring.coordinator``) under one lock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from corpmerge.scoring.evaluator import Unit


def unit_examples(unit: Unit) -> int:
    return sum(len(ids) for ids in unit.docs.values())


@dataclass(frozen=True)
class Deadlines:
    """When a unit out on a worker counts as stalled (``scoring.stall_factor``, ``scoring.unit_timeout``).

    A unit of n examples may take max(floor, factor × n × c) seconds, c being the largest cost per
    example measured so far on any rank for the unit's suite (the slowest rank sets the pace);
    before anything was measured, the floor alone.
    """

    factor: float
    floor: float

    def seconds(self, examples: int, per_example: float | None) -> float:
        return self.floor if per_example is None else max(self.floor, self.factor * examples * per_example)


@dataclass
class Flight:
    """A unit out on a worker: since when, how long it may take, and whether it was given to another process."""

    unit: Unit
    started: float
    allowed: float
    reclaimed: bool = False


class Batch:
    """One ``Coordinator.run``: the units left to deal, those out on workers, and the results coming back."""

    def __init__(self, units: list[Unit]):
        self.units = deque(units)
        self.left = len(units)  # units whose scores are not saved yet (rank 0's thread only)
        self.flights: dict[int, Flight] = {}
        self.lock = threading.Lock()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = threading.Event()

    def take(self, rank: int | None, allowed: Callable[[Unit], float]) -> Unit | None:
        """The next unit (None when none is left or the batch is stopping); a worker's is recorded as in flight."""
        with self.lock:
            if self.stop.is_set() or not self.units:
                return None
            unit = self.units.popleft()
            if rank is not None:
                self.flights[rank] = Flight(unit, time.monotonic(), allowed(unit))
            return unit

    def land(self, rank: int) -> Flight:
        with self.lock:
            return self.flights.pop(rank)

    def overdue(self) -> list[tuple[int, Flight]]:
        """Flights past their deadline, now given back to the deal (front of the queue); their late answers are discarded."""
        now = time.monotonic()
        with self.lock:
            late = [(r, f) for r, f in self.flights.items() if not f.reclaimed and now - f.started > f.allowed]
            for _, flight in late:
                flight.reclaimed = True
                self.units.appendleft(flight.unit)
        return late

    def stuck(self, rank: int) -> Flight | None:
        """The flight of ``rank`` if it was given to another process and the rank has not answered yet."""
        with self.lock:
            flight = self.flights.get(rank)
            return flight if flight is not None and flight.reclaimed else None

    def busy(self) -> bool:
        """Whether a worker that is not stalled still holds a unit of this batch."""
        with self.lock:
            return any(not f.reclaimed for f in self.flights.values())
