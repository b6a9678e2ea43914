"""What the benches read back from a run's score store: a shipped model's per-example test scores and the
test examples' clusters, so that paired intervals between runs are computed on the same examples, clustered
where the task declares ``metadata.cluster_by`` (as corpmerge's own report computes them)."""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from pathlib import Path

import numpy as np

from corpmerge.output.folder import shipped_update
from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.subjects import update_subject


def test_vector(store: Path, subject: str, task: str | None = None) -> tuple[list[tuple[str, int]], np.ndarray]:
    """(task, doc_id) keys and 0/1 correctness of ``subject`` on the store's test fold (``T:…``) of ``task`` (the one
    test fold when None), in key order."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        if task:
            folds = {f for (f,) in db.execute("SELECT DISTINCT fold FROM scores WHERE fold LIKE 'T:%' AND subject = 'base' AND task = ?", (task,))}
        else:
            folds = {f for (f,) in db.execute("SELECT DISTINCT fold FROM units WHERE fold LIKE 'T:%' AND subject = 'base'")}
        if len(folds) != 1:
            raise SystemExit(f"{store}: expected one test fold for the base{f' on {task}' if task else ''}, found {sorted(folds)}")
        rows = db.execute("SELECT task, doc_id, correct FROM scores WHERE subject = ? AND fold = ? ORDER BY task, doc_id", (subject, folds.pop())).fetchall()
    return [(t, d) for t, d, _ in rows], np.array([c for _, _, c in rows], dtype=float)


def shipped_subject(output: Path, accepted: bool) -> str:
    """The store subject of what ``output`` ships: its lineage's update, or the base when the gate abstained."""
    amps = shipped_update(output) if accepted else None
    return "base" if amps is None else update_subject(amps)


@lru_cache(maxsize=8)
def _suite(tasks: tuple[str, ...], split: str) -> TaskSuite:
    """The tasks loaded once per bench process (every variant of a task × seed asks for the same ones)."""
    return TaskSuite(ScoringSpec(tasks=list(tasks)), split=split)


def question_clusters(keys: list[tuple[str, int]], tasks: list[str], split: str) -> list[str] | None:
    """Each test example's cluster as its task declares it (``metadata.cluster_by``), None when none declares one."""
    return _suite(tuple(tasks), split).clusters(keys)


def entry_with_accuracy(store: Path, accuracy: float, task: str | None = None) -> str | None:
    """The one population entry (``entry:…`` subject) whose test accuracy on ``task`` is ``accuracy`` — a report's
    RandOpt K=1 row names its accuracy, not its entry; None when no entry, or more than one, has it."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        subjects = [s for (s,) in db.execute("SELECT DISTINCT subject FROM scores WHERE subject LIKE 'entry:%' AND fold LIKE 'T:%'")]
    found = [s for s in subjects if abs(test_vector(store, s, task)[1].mean() - accuracy) < 1e-12]
    return found[0] if len(found) == 1 else None
