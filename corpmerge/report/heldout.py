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
from corpmerge.scoring.scorer import entry_update, ordered
from corpmerge.scoring.session import Session, suite_counts
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
    as ``rows[a]["vs_" + b]``."""
    spec = session.recipe.evaluate
    suite = session.suites("evaluate")
    support = support_docs(session)
    excluded: dict[str, int] = {}
    docs: Docs = {}
    for name in suite.tasks:
        used = support.get(name, set()) if suite.split[name] == session.suite.split.get(name) else set()
        free = [d for d in range(suite.doc_count(name)) if d not in used]
        docs[name] = free[: spec.limit] if spec.limit else free
        if used:
            excluded[name] = len(used)
    if not any(docs.values()):
        raise CorpmergeError(f"evaluate.split: every example of '{spec.split}' is a support example; evaluate on another split (e.g. test)")
    fold = "T:" + hashlib.blake2b(repr((suite.fingerprint(), sorted(docs.items()))).encode(), digest_size=6).hexdigest()
    voters = (ranked or [])[: max(ensemble_k or [0])]
    todo = dict(subjects) | {f"entry:{e.seed}": (entry_subject(e), entry_update(e)) for e in voters}
    requests = [Request(subject, fold, docs, update, suite="evaluate") for subject, update in todo.values()]
    results = dict(zip(todo, session.evaluate(requests, f"held-out evaluation ({spec.split})")))
    vectors = {label: ordered(results[label], docs) for label in subjects}
    keys = [(t, d) for t in sorted(docs) for d in docs[t]]
    for k in ensemble_k or []:
        members = [results[f"entry:{e.seed}"] for e in voters[:k]]
        vectors[f"randopt_top{k}"] = majority_vote([[m[key].prediction for key in keys] for m in members], [[m[key].correct for key in keys] for m in members])
    base = vectors["base"]
    tasks = np.array([t for t, _ in keys])
    clusters = suite.clusters(keys)

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
        "tasks": sorted(suite.tasks),
        "rows": rows,
        "n": int(base.size),
        "ranked_on": f"fold A ({count(session.folds['A'])} examples)",
    }
    if clusters is not None:
        report["clustered_by"] = dict(suite.cluster_by)
        report["clusters"] = len(set(clusters))
    if excluded:
        report["excluded_support"] = excluded  # {task: support examples of this split left out of the evaluation}
    if ensemble_k and "merged" in rows:
        biggest = f"randopt_top{max(ensemble_k)}"
        report["recovered_fraction"] = recovered_fraction(rows["base"]["accuracy"], rows[biggest]["accuracy"], rows["merged"]["accuracy"])
    return report
