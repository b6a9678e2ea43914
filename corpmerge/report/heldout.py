"""Held-out evaluation on the evaluate split: accuracies, paired 95% intervals, RandOpt top-K votes."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from corpmerge.errors import CorpmergeError
from corpmerge.gate.paired import clustered_interval
from corpmerge.population import Entry
from corpmerge.report.ensemble import majority_vote, recovered_fraction
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.folds import Docs, count, round_folds
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.scorer import entry_update, ordered
from corpmerge.scoring.session import Session, suite_counts
from corpmerge.scoring.store import Scores
from corpmerge.scoring.subjects import entry_subject


def support_docs(session: Session) -> dict[str, set[int]]:
    """Every support example a run may use: folds A/B/C and the fresh folds of each possible stage-2 round."""
    used: dict[str, set[int]] = {}
    for folds in [session.folds] + _stage2_folds(session):
        for fold_docs in folds.values():
            for task, ids in fold_docs.items():
                used.setdefault(task, set()).update(ids)
    return used


def _stage2_folds(session: Session) -> list[dict[str, Docs]]:
    spec, support = session.recipe.iterate, session.recipe.scoring.support
    if spec is None:
        return []
    counts = suite_counts(session.suite)
    labels = session.suite.cluster_labels()
    return [round_folds(counts, support, r, labels) for r in range(1, spec.rounds + spec.patience + 1)]


def accuracy(scores: dict, docs: Docs) -> float:
    return float(ordered(scores, docs).mean())


def evaluate_held_out(
    session: Session,
    subjects: dict[str, tuple[str, Any]],
    ranked: list[Entry] | None = None,
    ensemble_k: list[int] | None = None,
    pairs: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Accuracy on the evaluate split for each subject (and RandOpt top-K votes), with paired 95% intervals vs the base
    (cluster-robust where a task declares ``metadata.cluster_by``); each (a, b) in ``pairs`` also gets a − b paired,
    as ``rows[a]["vs_" + b]``.

    The main rows pool the evaluate tasks the support trains (all of them when it trains none); every other task of
    ``evaluate.tasks`` is reported on its own under ``other_tasks`` (the subjects, no votes), so that a regression
    on what the support does not train shows beside the gain on what it does."""
    spec = session.recipe.evaluate
    suite = session.suites("evaluate")
    support = support_docs(session)
    excluded: dict[str, int] = {}
    docs: Docs = {}
    others: Docs = {}
    main = [name for name in suite.tasks if name in session.suite.tasks] or list(suite.tasks)
    for name in suite.tasks:
        used = support.get(name, set()) if suite.split[name] == session.suite.split.get(name) else set()
        free = [d for d in range(suite.doc_count(name)) if d not in used]
        (docs if name in main else others)[name] = free[: spec.limit] if spec.limit else free
        if used:
            excluded[name] = len(used)
    if not any(docs.values()):
        raise CorpmergeError(f"evaluate.split: every example of '{spec.split}' is a support example; evaluate on another split (e.g. test)")
    fold = "T:" + hashlib.blake2b(repr((suite.fingerprint(), sorted(docs.items()))).encode(), digest_size=6).hexdigest()
    voters = (ranked or [])[: max(ensemble_k or [0])]
    todo = dict(subjects) | {f"entry:{e.seed}": (entry_subject(e), entry_update(e)) for e in voters}
    requests = [Request(subject, fold, docs, update, suite="evaluate") for subject, update in todo.values()]
    other_fold = "T:" + hashlib.blake2b(repr((suite.fingerprint(), sorted(others.items()))).encode(), digest_size=6).hexdigest()
    requests += [Request(subject, other_fold, others, update, suite="evaluate") for subject, update in subjects.values()] if others else []
    answers = session.evaluate(requests, f"held-out evaluation ({spec.split})")
    results = dict(zip(todo, answers))
    other_results = dict(zip(subjects, answers[len(todo) :]))
    vectors = {label: ordered(results[label], docs) for label in subjects}
    keys = [(t, d) for t in sorted(docs) for d in docs[t]]
    for k in ensemble_k or []:
        members = [results[f"entry:{e.seed}"] for e in voters[:k]]
        vectors[f"randopt_top{k}"] = majority_vote([[m[key].prediction for key in keys] for m in members], [[m[key].correct for key in keys] for m in members])
    base = vectors["base"]
    tasks = np.array([t for t, _ in keys])
    clusters = suite.clusters(keys) if any(t in suite.cluster_by for t in docs) else None

    def interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        return clustered_interval(a, b, clusters)

    def by_task(vec: np.ndarray) -> dict[str, float]:
        return {t: float(vec[tasks == t].mean()) for t in sorted(docs) if docs[t]}

    rows: dict[str, Any] = {"base": {"accuracy": float(base.mean()), "n": int(base.size), "by_task": by_task(base)}}
    for label, vec in vectors.items():
        if label != "base":
            diff, low, high = interval(base, vec)
            rows[label] = {"accuracy": float(vec.mean()), "n": int(vec.size), "diff": diff, "ci_low": low, "ci_high": high, "by_task": by_task(vec)}
            if "best_entry" in vectors and label != "best_entry":  # paired against RandOpt K=1 too
                d1, lo1, hi1 = interval(vectors["best_entry"], vec)
                rows[label]["vs_k1"] = {"diff": d1, "ci_low": lo1, "ci_high": hi1}
    for a, b in pairs:
        if a in rows and b in vectors:
            d, lo, hi = interval(vectors[b], vectors[a])
            rows[a][f"vs_{b}"] = {"diff": d, "ci_low": lo, "ci_high": hi}
    report: dict[str, Any] = {
        "split": spec.split,
        "tasks": sorted(docs),
        "rows": rows,
        "n": int(base.size),
        "ranked_on": f"fold A ({count(session.folds['A'])} examples)",
        "n_by_task": {t: len(d) for t, d in sorted(docs.items())},  # what the card's model-index values stand on
        "split_sizes": {t: suite.doc_count(t) for t in sorted(docs)},
    }
    if clusters is not None:
        report["clustered_by"] = {t: f for t, f in suite.cluster_by.items() if t in docs}
        report["clusters"] = len(set(clusters))
    if others:
        report["other_tasks"] = {task: task_report(suite, other_results, task, ids) for task, ids in sorted(others.items())}
    if excluded:
        report["excluded_support"] = excluded  # {task: support examples of this split left out of the evaluation}
    if ensemble_k and "merged" in rows:
        biggest = f"randopt_top{max(ensemble_k)}"
        spans = tuple((rows[r]["ci_low"], rows[r]["ci_high"]) for r in (biggest, "merged"))  # None when a gain's interval covers 0
        report["recovered_fraction"] = recovered_fraction(rows["base"]["accuracy"], rows[biggest]["accuracy"], rows["merged"]["accuracy"], spans)
    return report


def task_report(suite: TaskSuite, results: dict[str, Scores], task: str, ids: list[int]) -> dict[str, Any]:
    """One further task of ``evaluate.tasks`` on its own: each subject's accuracy, paired 95% intervals vs the base
    and vs RandOpt K=1 (``best_entry``), cluster-robust when the task declares ``metadata.cluster_by``."""
    docs = {task: ids}
    keys = [(task, d) for d in ids]
    clusters = suite.clusters(keys) if task in suite.cluster_by else None
    vectors = {label: ordered(scores, docs) for label, scores in results.items()}
    base = vectors["base"]
    rows: dict[str, Any] = {"base": {"accuracy": float(base.mean()), "n": int(base.size)}}
    for label, vec in vectors.items():
        if label != "base":
            diff, low, high = clustered_interval(base, vec, clusters)
            rows[label] = {"accuracy": float(vec.mean()), "n": int(vec.size), "diff": diff, "ci_low": low, "ci_high": high}
            if "best_entry" in vectors and label != "best_entry":
                d1, lo1, hi1 = clustered_interval(vectors["best_entry"], vec, clusters)
                rows[label]["vs_k1"] = {"diff": d1, "ci_low": lo1, "ci_high": hi1}
    out: dict[str, Any] = {"n": len(ids), "split_size": suite.doc_count(task), "rows": rows}
    if clusters is not None:
        out["clustered_by"] = suite.cluster_by[task]
        out["clusters"] = len(set(clusters))
    return out
