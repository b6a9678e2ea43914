"""Held-out evaluation on the evaluate split: accuracies, paired 95% intervals, RandOpt top-K votes."""

from __future__ import annotations

import hashlib
from typing import Any

from corpmerge.report.ensemble import majority_vote, recovered_fraction
from corpmerge.scoring.folds import Docs
from corpmerge.gate.paired import paired_interval
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.population import Entry
from corpmerge.progress import task
from corpmerge.scoring.scorer import entry_subject, entry_update, ordered
from corpmerge.scoring.session import Session


def accuracy(scores: dict, docs: Docs) -> float:
    return float(ordered(scores, docs).mean())


def evaluate_held_out(
    session: Session, subjects: dict[str, tuple[str, Any]], ranked: list[Entry] | None = None, ensemble_k: list[int] | None = None,
) -> dict[str, Any]:
    """Accuracy on the evaluate split for each subject (and RandOpt top-K votes), with paired 95% intervals vs the base."""
    spec = session.recipe.evaluate
    suite = TaskSuite(session.recipe.scoring, tasks=spec.tasks, split=spec.split)
    docs = {name: list(range(min(spec.limit or suite.doc_count(name), suite.doc_count(name)))) for name in suite.tasks}
    fold = "T:" + hashlib.blake2b(repr((suite.fingerprint(), sorted(docs.items()))).encode(), digest_size=6).hexdigest()
    voters = (ranked or [])[: max(ensemble_k or [0])]
    todo = dict(subjects) | {f"entry:{e.seed}": (entry_subject(e), entry_update(e)) for e in voters}
    results = {}
    with task(f"held-out evaluation ({spec.split})", len(todo)) as advance:
        for label, (subject, update) in todo.items():
            results[label] = session.scorer.scores(subject, fold, docs, update, suite=suite)
            advance()
    vectors = {label: ordered(results[label], docs) for label in subjects}
    keys = [(t, d) for t in sorted(docs) for d in docs[t]]
    for k in ensemble_k or []:
        members = [results[f"entry:{e.seed}"] for e in voters[:k]]
        vectors[f"randopt_top{k}"] = majority_vote(
            [[m[key].prediction for key in keys] for m in members], [[m[key].correct for key in keys] for m in members]
        )
    base = vectors["base"]
    rows: dict[str, Any] = {"base": {"accuracy": float(base.mean()), "n": int(base.size)}}
    for label, vec in vectors.items():
        if label != "base":
            diff, low, high = paired_interval(base, vec)
            rows[label] = {"accuracy": float(vec.mean()), "n": int(vec.size), "diff": diff, "ci_low": low, "ci_high": high}
    report: dict[str, Any] = {"split": spec.split, "tasks": sorted(suite.tasks), "rows": rows}
    if ensemble_k and "merged" in rows:
        biggest = f"randopt_top{max(ensemble_k)}"
        report["recovered_fraction"] = recovered_fraction(rows["base"]["accuracy"], rows[biggest]["accuracy"], rows["merged"]["accuracy"])
    return report
