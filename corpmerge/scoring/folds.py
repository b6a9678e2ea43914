"""Deterministic support folds: A (construct), B (validate), C (probe)."""

from __future__ import annotations

import hashlib
import zlib

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


def assign_folds(doc_counts: dict[str, int], support: SupportSpec) -> dict[str, Docs]:
    """Shuffle each task's support docs with ``split_seed``, keep ``limit``, cut into A/B/C by the fractions."""
    folds: dict[str, Docs] = {fold: {} for fold in FOLDS}
    for task in sorted(doc_counts):
        rng = np.random.default_rng([support.split_seed, zlib.crc32(task.encode())])
        ids = rng.permutation(doc_counts[task])[: support.limit].tolist()
        n = len(ids)
        n_a = round(support.folds.construct_ * n)
        n_b = round(support.folds.validate_ * n)
        if min(n_a, n_b, n - n_a - n_b) < 1:
            raise CorpmergeError(f"scoring.support: task '{task}' has {n} support examples, too few for three non-empty folds; raise support.limit")
        folds["A"][task] = sorted(ids[:n_a])
        folds["B"][task] = sorted(ids[n_a : n_a + n_b])
        folds["C"][task] = sorted(ids[n_a + n_b :])
    return folds


def round_folds(doc_counts: dict[str, int], support: SupportSpec, round_: int) -> dict[str, Docs]:
    """Stage-2 round ``round_``'s fresh folds: the same assignment with ``split_seed + round_``."""
    return assign_folds(doc_counts, support.model_copy(update={"split_seed": support.split_seed + round_}))


def fold_fingerprint(folds: dict[str, Docs]) -> str:
    blob = repr(sorted((f, t, tuple(ids)) for f, docs in folds.items() for t, ids in docs.items()))
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def count(docs: Docs) -> int:
    return sum(len(ids) for ids in docs.values())
