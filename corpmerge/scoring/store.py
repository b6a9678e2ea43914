"""Resumable SQLite store of per-example scores: one row per (subject, fold, example).

A *subject* is what was evaluated (the base, a population entry, a candidate update). Each
evaluation of a subject on some examples of a fold is committed in one transaction, so a
killed run loses at most the evaluation in flight. A subject may hold only part of a fold
(racing scores entries on growing prefixes of fold A): callers ask for the examples that are
still ``missing``. The store is bound to an identity (base
fingerprint, task config, fold assignment, noise scheme, perturbed parameters); opening it
with a different identity is refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from corpmerge import __version__
from corpmerge.errors import CorpmergeError
from corpmerge.scoring.lmeval import ExampleScore

Scores = dict[tuple[str, int], ExampleScore]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    subject TEXT NOT NULL, fold TEXT NOT NULL, spec TEXT, finished REAL NOT NULL,
    PRIMARY KEY (subject, fold)
);
CREATE TABLE IF NOT EXISTS scores (
    subject TEXT NOT NULL, fold TEXT NOT NULL, task TEXT NOT NULL, doc_id INTEGER NOT NULL,
    value REAL NOT NULL, correct INTEGER NOT NULL, prediction TEXT,
    PRIMARY KEY (subject, fold, task, doc_id)
);
"""
IDENTITY_LABELS = {
    "base": "base model",
    "tasks": "task configuration",
    "folds": "fold assignment",
    "noise": "noise scheme",
    "perturb": "set of perturbed parameters",
    "scoring": "scoring setup (backend, scoring dtype, device type)",
}


class ScoreStore:
    """Per-example scores keyed by subject, resumable across runs and processes."""

    def __init__(self, path: str | Path, identity: dict[str, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(scores)")}
        if "prediction" not in columns:  # stores written before predictions were kept
            self.db.execute("ALTER TABLE scores ADD COLUMN prediction TEXT")
        self._bind(identity)

    def _bind(self, identity: dict[str, str]) -> None:
        with self._transaction():
            stored = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
            for key, value in identity.items():
                if stored and key not in stored:
                    raise CorpmergeError(
                        f"{self.path}: this score store was made by an older corpmerge that did not record the "
                        f"{IDENTITY_LABELS.get(key, key)}; set scoring.store (or output.work_dir) to a new path, or delete the file to start over"
                    )
                if key in stored and stored[key] != value:
                    label = IDENTITY_LABELS.get(key, key)
                    raise CorpmergeError(
                        f"{self.path}: this score store was made for a different {label} ({stored[key]} ≠ {value}); "
                        "set scoring.store (or output.work_dir) to a new path, or delete the file to start over"
                    )
            rows = [(k, v) for k, v in identity.items() if k not in stored]
            rows += [("created", str(time.time())), ("corpmerge_version", __version__)] if not stored else []
            self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", rows)

    def _transaction(self) -> "_Tx":
        return _Tx(self.db)

    def subjects(self, fold: str) -> set[str]:
        """Every subject with at least one stored example on ``fold``."""
        return {r[0] for r in self.db.execute("SELECT subject FROM units WHERE fold=?", (fold,))}

    def missing(self, subject: str, fold: str, keys: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The examples of ``keys`` (in their order) that ``subject`` has no stored score for."""
        have = set(self.db.execute("SELECT task, doc_id FROM scores WHERE subject=? AND fold=?", (subject, fold)).fetchall())
        return [k for k in keys if k not in have]

    def save(self, subject: str, fold: str, scores: Scores, spec: dict[str, Any] | None = None) -> None:
        """Commit the scores of one evaluation atomically (examples already stored keep their first score)."""
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(subject, fold, task, doc, s.value, int(s.correct), s.prediction) for (task, doc), s in scores.items()],
            )
            self.db.execute(
                "INSERT OR IGNORE INTO units VALUES (?, ?, ?, ?)",
                (subject, fold, json.dumps(spec, sort_keys=True) if spec else None, time.time()),
            )

    def load(self, subject: str, fold: str) -> Scores:
        """Every stored score of ``subject`` on ``fold``."""
        rows = self.db.execute(
            "SELECT task, doc_id, value, correct, prediction FROM scores WHERE subject=? AND fold=?", (subject, fold)
        )
        return {(t, d): ExampleScore(v, bool(c), p) for t, d, v, c, p in rows}

    def close(self) -> None:
        self.db.close()


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, rolled back on error (serialises writers across processes)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

