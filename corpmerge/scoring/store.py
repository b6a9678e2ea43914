"""Resumable SQLite store of per-example scores: one row per (subject, fold, example).

A *subject* is what was evaluated (the base, a population entry, a candidate update). Each
evaluation of a subject on some examples of a fold is committed in one transaction, so a
killed run loses at most the evaluation in flight. A subject may hold only part of a fold
(racing scores entries on growing prefixes of fold A): callers ask for the examples that are
still ``missing``. The store is bound to an identity (base
fingerprint, task config, fold assignment, noise scheme and rank, form of a scored update, perturbed parameters); opening it
with a different identity is refused.

One run at a time: the store is held under an exclusive ``flock`` on ``<store>.lock`` from open
to close, and a second run that opens it *waits* (saying who holds it) until the first one is
done, then finds every evaluation the first one finished and evaluates only what is missing, so
no unit is evaluated twice and both reach the same decisions (racing cuts, gate) from the same
scores. Waiting rather than sharing the work: every decision is taken by one process from what the
store holds; spreading one run over processes is the Ray workers' job (``scoring.workers``). The kernel drops the lock
when its holder exits, however it exits (``kill -9`` included), so a lock is never stale. A write
that fails (a full disk) is one line; SQLite rolls the transaction back and the store stays intact.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from corpmerge import __version__
from corpmerge.errors import CorpmergeError, first_line, log_traceback
from corpmerge.scoring.lmeval import ExampleScore

log = logging.getLogger(__name__)

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
    "rank": "noise rank (population.rank)",
    "form": "form of a scored update (weights, or low-rank adapters for output.format: peft)",
    "perturb": "set of perturbed parameters",
    "scoring": "scoring setup (backend, scoring dtype, device type)",
}

# keys a store records only when not at this value (stores before them hold it)
OPTIONAL_IDENTITY = {"rank": "full", "form": "weights"}


def rank_identity(rank: int | None) -> str:
    """The store identity's ``rank``: ``full`` or r; scores at one rank are never those of another."""
    return "full" if rank is None else str(rank)


def form_identity(adapters: bool) -> str:
    """The store identity's ``form``: ``weights`` (θ₀ + Δ written, rounded once) or ``adapters`` (W·x + B·(A·x) on θ₀),
    whose scores agree to float tolerance, not bit for bit, so one is never taken for the other."""
    return "adapters" if adapters else "weights"


def with_optional_identity(stored: dict[str, str]) -> dict[str, str]:
    """A store's recorded identity with the ``OPTIONAL_IDENTITY`` values it leaves out (a store without ``rank`` is full rank)."""
    return {**OPTIONAL_IDENTITY, **stored} if stored else stored


class ScoreStore:
    """Per-example scores keyed by subject, resumable across runs and processes."""

    def __init__(self, path: str | Path, identity: dict[str, str]):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _hold(Path(f"{self.path}.lock"))
        except OSError as exc:
            raise self._failed("opening", exc) from None
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(scores)")}
            if "prediction" not in columns:  # stores written before predictions were kept
                self.db.execute("ALTER TABLE scores ADD COLUMN prediction TEXT")
            self._bind(identity)
        except BaseException as exc:
            os.close(self._lock)
            if isinstance(exc, sqlite3.Error):
                raise self._failed("opening", exc) from None
            raise

    def _failed(self, doing: str, exc: Exception) -> CorpmergeError:
        log_traceback(f"score store {self.path}: {doing}", exc)
        return CorpmergeError(
            f"scoring.store: {doing} '{self.path}' failed ({first_line(exc)}); every evaluation finished before is kept — "
            "free space (or make the folder writable) and run the same command again"
        )

    def _bind(self, identity: dict[str, str]) -> None:
        with self._transaction():
            stored = with_optional_identity(dict(self.db.execute("SELECT key, value FROM meta").fetchall()))
            for key, value in identity.items():
                if stored and key not in stored:
                    raise CorpmergeError(
                        f"{self.path}: this score store was made by an older corpmerge that did not record the "
                        f"{IDENTITY_LABELS.get(key, key)}; set scoring.store (or output.work_dir) to a new path, or delete the file to start over"
                    )
                if key in stored and stored[key] != value:
                    label = IDENTITY_LABELS.get(key, key)
                    resume = f"add `noise: {stored[key]}` to the recipe to resume it, or " if key == "noise" else ""
                    raise CorpmergeError(
                        f"{self.path}: this score store was made for a different {label} ({stored[key]} ≠ {value}); "
                        f"{resume}set scoring.store (or output.work_dir) to a new path, or delete the file to start over"
                    )
            rows = [(k, v) for k, v in identity.items() if k not in stored and OPTIONAL_IDENTITY.get(k) != v]
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
        try:
            with self._transaction():
                self.db.executemany(
                    "INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(subject, fold, task, doc, s.value, int(s.correct), s.prediction) for (task, doc), s in scores.items()],
                )
                self.db.execute(
                    "INSERT OR IGNORE INTO units VALUES (?, ?, ?, ?)",
                    (subject, fold, json.dumps(spec, sort_keys=True) if spec else None, time.time()),
                )
        except sqlite3.Error as exc:
            raise self._failed("writing", exc) from None

    def load(self, subject: str, fold: str) -> Scores:
        """Every stored score of ``subject`` on ``fold``."""
        rows = self.db.execute("SELECT task, doc_id, value, correct, prediction FROM scores WHERE subject=? AND fold=?", (subject, fold))
        return {(t, d): ExampleScore(v, bool(c), p) for t, d, v, c, p in rows}

    def close(self) -> None:
        """Close the database, then let the next run have the store."""
        try:
            self.db.close()
        finally:
            os.close(self._lock)  # closing the descriptor releases the flock


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, rolled back on error (serialises writers across processes)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.db.execute("ROLLBACK")
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            if self.db.in_transaction:  # a COMMIT that failed (a full disk) leaves the transaction open
                self.db.execute("ROLLBACK")
            raise


def _hold(path: Path) -> int:
    """An exclusive flock on ``path`` (made if missing), waiting for the run that holds it; returns the descriptor.

    The file says who holds the lock (pid, host, command, since), for the waiting run's message.
    The descriptor is not inherited by programs the run starts (O_CLOEXEC).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            log.warning("%s is in use by another corpmerge run (%s); waiting until it finishes", path.with_suffix(""), holder)
            start = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("got %s after %.0f s", path.with_suffix(""), time.monotonic() - start)
        holder = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd
