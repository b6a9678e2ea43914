"""Batches of evaluations: what the pipeline asks for, run on this process or handed out to workers.

A *request* names a subject (the base, an entry, a candidate), a store fold label, the examples
and the update that defines the subject. The evaluator reads finished examples back from the
store and evaluates only the missing ones, as *units* (request index, missing examples); each
unit's scores are committed in one transaction, so an interrupted batch resumes where it stopped.

With a scorer that takes rank-r updates in LoRA batches (``Scorer.batch_limit`` > 0), the units of population entries
(``subjects.is_entry``) with the same examples and suite are evaluated together, up to ``batch_limit`` at once
(``Scorer.evaluate_many``), each unit still committed on its own. Every other unit (the base, a merge candidate, a
stage-2 proposal, the held-out score of what ships) is evaluated alone through the full weights round(θ₀ + Δ), so the
gate scores the bits that are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, Sequence

from corpmerge.progress import task
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import Scorer, Update, as_docs
from corpmerge.scoring.store import Scores, ScoreStore
from corpmerge.scoring.subjects import is_entry

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


def batches(units: Sequence[Unit], limit: int) -> list[tuple[bool, list[Unit]]]:
    """``units`` as (through LoRA, group), in the order of each group's first unit: with ``limit`` > 0, population entries
    with the same examples and suite in groups of at most ``limit``; every other unit alone (not through LoRA)."""
    groups: list[tuple[bool, list[Unit]]] = []
    open_groups: dict[Hashable, list[Unit]] = {}
    for unit in units:
        if limit <= 0 or not is_entry(unit.subject):
            groups.append((False, [unit]))
            continue
        key = (unit.suite, tuple((task, tuple(ids)) for task, ids in sorted(unit.docs.items())))
        group = open_groups.get(key)
        if group is None or len(group) >= limit:
            group = open_groups[key] = []
            groups.append((True, group))
        group.append(unit)
    return groups


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
            groups = batches(units, self.scorer.batch_limit)
            with task(label, len(units)) as advance:
                for (lora, group), then in zip(groups, [*groups[1:], None]):
                    for unit, scores in zip(group, self._evaluate(lora, group, then)):
                        self.store.save(unit.subject, unit.fold, scores, requests[unit.index].spec)
                        advance()
        return collect(self.store, requests)

    def _evaluate(self, lora: bool, group: list[Unit], then: tuple[bool, list[Unit]] | None) -> list[Scores]:
        """The group's scores: together through LoRA, or its one unit alone (the next one's noise drawn meanwhile)."""
        first = group[0]
        if lora:
            return self.scorer.evaluate_many([unit.update for unit in group], first.docs, self.suites(first.suite))
        after = then[1][0].update if then is not None and not then[0] else None
        return [self.scorer.evaluate(first.update, first.docs, self.suites(first.suite), then=after)]

    def close(self) -> None:
        return None
