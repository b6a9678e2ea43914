"""Deterministic support folds: A (construct), B (validate), C (probe)."""

from __future__ import annotations

import hashlib
import zlib
from typing import Hashable, Mapping, Sequence

import numpy as np

from corpmerge.errors import CorpmergeError
from corpmerge.recipe import SupportSpec

FOLDS = ("A", "B", "C")
Docs = dict[str, list[int]]
MIN_GATE_EXAMPLES = 20  # per gate fold: below it one fix passes any test (sd = 0), so the gate means nothing


def check_gate_fold_sizes(sizes: dict[str, int], where: str) -> None:
    """Refuse validate/probe folds below ``MIN_GATE_EXAMPLES`` examples, naming the recipe fields to raise."""
    for fold, label in (("B", "validate"), ("C", "probe")):
        if sizes[fold] < MIN_GATE_EXAMPLES:
            raise CorpmergeError(
                f"scoring.support: the gate's {label} fold (fold {fold}) would have {sizes[fold]} examples{where}; it needs at least "
                f"{MIN_GATE_EXAMPLES} — raise scoring.support.limit or scoring.support.folds.{label}"
            )


def assign_folds(doc_counts: dict[str, int], support: SupportSpec, clusters: Mapping[str, Sequence[Hashable]] | None = None) -> dict[str, Docs]:
    """Shuffle each task's support docs with ``split_seed``, keep ``limit``, cut into A/B/C by the fractions.

    A task in ``clusters`` (its docs' values of ``metadata.cluster_by``, one per doc) is cut by cluster, so that no
    cluster is in two folds: the same kept docs are grouped by cluster, the clusters shuffled (the same generator,
    drawn next), and a cluster whose examples span positions [c, c + size) of that order goes to the fold that holds
    its midpoint c + size/2; fold sizes then match the fractions to within about half a cluster, and each fold is a
    random sample of clusters. Other tasks are cut as before (the same folds, the same fingerprint).
    """
    folds: dict[str, Docs] = {fold: {} for fold in FOLDS}
    for task in sorted(doc_counts):
        rng = np.random.default_rng([support.split_seed, zlib.crc32(task.encode())])
        ids = rng.permutation(doc_counts[task])[: support.limit].tolist()
        n = len(ids)
        n_a = round(support.folds.construct_ * n)
        n_b = round(support.folds.validate_ * n)
        if clusters is not None and task in clusters:
            parts = _cut_by_cluster(ids, clusters[task], n_a, n_b, rng)
            what = "distinct clusters (metadata.cluster_by)"
        else:
            parts = (ids[:n_a], ids[n_a : n_a + n_b], ids[n_a + n_b :])
            what = "support examples"
        if min(len(p) for p in parts) < 1:
            size = len({clusters[task][d] for d in ids}) if what != "support examples" else n
            raise CorpmergeError(f"scoring.support: task '{task}' has {size} {what}, too few for three non-empty folds; raise support.limit")
        for fold, part in zip(FOLDS, parts):
            folds[fold][task] = sorted(part)
    return folds


def _cut_by_cluster(ids: list[int], labels: Sequence[Hashable], n_a: int, n_b: int, rng: np.random.Generator) -> tuple[list[int], list[int], list[int]]:
    """``ids`` cut into three parts at n_a and n_a + n_b, whole clusters at a time in a shuffled order (by each one's midpoint)."""
    groups: dict[Hashable, list[int]] = {}
    for doc in ids:
        groups.setdefault(labels[doc], []).append(doc)
    members_of = list(groups.values())
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    start = 0
    for i in rng.permutation(len(members_of)).tolist():
        members = members_of[i]
        middle = start + len(members) / 2
        parts[0 if middle <= n_a else 1 if middle <= n_a + n_b else 2].extend(members)
        start += len(members)
    return parts


def round_folds(doc_counts: dict[str, int], support: SupportSpec, round_: int, clusters: Mapping[str, Sequence[Hashable]] | None = None) -> dict[str, Docs]:
    """Stage-2 round ``round_``'s fresh folds: the same assignment with ``split_seed + round_``."""
    return assign_folds(doc_counts, support.model_copy(update={"split_seed": support.split_seed + round_}), clusters)


def fold_fingerprint(folds: dict[str, Docs]) -> str:
    blob = repr(sorted((f, t, tuple(ids)) for f, docs in folds.items() for t, ids in docs.items()))
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def count(docs: Docs) -> int:
    return sum(len(ids) for ids in docs.values())
