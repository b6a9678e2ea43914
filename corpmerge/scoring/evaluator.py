"""Batches of evaluations: what the pipeline asks for, run on this process or handed out to workers.

A *request* names a subject (the base, an entry, a candidate), a store fold label, the examples
and the update that defines the subject. The evaluator reads finished examples back from the
store and evaluates only the missing ones, as *units* (request index, missing examples); each
unit's scores are committed in one transaction, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from corpmerge.progress import task
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import Scorer, Update, as_docs
from corpmerge.scoring.store import Scores, ScoreStore

Key = tuple[str, int]


@dataclass(frozen=True)
class Request:
    """Scores of ``subject`` on ``docs`` (store fold ``fold``), evaluated as θ₀ + Δ(update) on suite ``suite``."""

    subject: str
    fold: str
    docs: Docs
    update: Update | None = None
    spec: dict[str, Any] | None = None
    suite: str = "support"  # "support" or "evaluate" (the held-out suite)

    def keys(self) -> list[Key]:
        return [(task, doc) for task in sorted(self.docs) for doc in self.docs[task]]


@dataclass(frozen=True)
class Unit:
    """The part of a request that still has to be evaluated."""

    index: int
    subject: str
    fold: str
    docs: Docs
    update: Update | None
    suite: str


def unit_examples(unit: Unit) -> int:
    """How many examples a unit evaluates."""
    return sum(len(ids) for ids in unit.docs.values())


class Evaluator(Protocol):
    def run(self, requests: Sequence[Request], label: str) -> list[Scores]: ...

    def close(self) -> None: ...


def plan_units(store: ScoreStore, requests: Sequence[Request]) -> list[Unit]:
    """The units of ``requests`` whose examples are not all in the store yet (duplicates merged)."""
    units: list[Unit] = []
    planned: set[tuple[str, str]] = set()
    for i, req in enumerate(requests):
        if (req.subject, req.fold) in planned:
            continue  # the same subject twice in a batch: evaluated once
        todo = store.missing(req.subject, req.fold, req.keys())
        if todo:
            planned.add((req.subject, req.fold))
            units.append(Unit(i, req.subject, req.fold, as_docs(todo), req.update, req.suite))
    return units


def collect(store: ScoreStore, requests: Sequence[Request]) -> list[Scores]:
    """Every request's scores, in its docs' order, read from the store."""
    out = []
    for req in requests:
        stored = store.load(req.subject, req.fold)
        out.append({k: stored[k] for k in req.keys()})
    return out


class LocalEvaluator:
    """Runs every unit on this process, one after the other."""

    def __init__(self, scorer: Scorer, store: ScoreStore, suites: Callable[[str], TaskSuite]):
        self.scorer, self.store, self.suites = scorer, store, suites

    def run(self, requests: Sequence[Request], label: str) -> list[Scores]:
        units = plan_units(self.store, requests)
        if units:
            with task(label, len(units)) as advance:
                for unit, then in zip(units, [*units[1:], None]):
                    after = then.update if then is not None else None  # its noise is drawn while this one evaluates
                    scores = self.scorer.evaluate(unit.update, unit.docs, self.suites(unit.suite), then=after)
                    self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
                    advance()
        return collect(self.store, requests)

    def close(self) -> None:
        return None
