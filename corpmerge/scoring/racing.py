"""Racing: score on growing prefixes of a fold, one batch of evaluations a stage, and stop what cannot win.

``staged_race`` is the loop (order → stage sizes → evaluate → cut) for the population here and for the
gate's candidates (``corpmerge.gate.procedure.race_candidates``, whose cut is on the constructive score).

The population races on fold A and stops entries that cannot become elites.

Every entry is compared with the base on the same examples (paired), and the base is scored
on the whole fold once. After m of the fold's n examples an entry's full-fold reward is

    r = (Σ_seen v + Σ_rest v_base + Σ_rest (v − v_base)) / n,

and only the last sum is unknown. Its bounds use the entry's up-moves u = Σ max(v − v_base, 0)
and down-moves w = Σ max(v_base − v, 0) on the seen examples: at most (n − m)·Wilson⁺(u/m)
up, at most (n − m)·Wilson⁺(w/m) down (one-sided Wilson bound at ``z``). Entries are also
compared pairwise on the same examples (``dominated``: the full-fold difference of two entries,
with the without-replacement standard error of its estimate), which separates them far sooner
than their own bounds. An entry stops when at least ``keep`` others beat it either way, where
``keep`` is the largest number of entries any consumer can use (the elites of the smallest grid
quantile, the largest RandOpt top-K): with the stated one-sided confidence per comparison, a
stopped entry is not an elite of any grid point. A mirrored pair (s, σ), (s, −σ) races as one: it
stops only when both members would, so its members are always scored on the same examples.
Survivors are scored on the whole fold, so elites and their weights use full-fold rewards; a stopped entry keeps its paired estimate and the number of examples it rests on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from corpmerge.population import Entry, mirror_groups
from corpmerge.recipe import RacingSpec
from corpmerge.scoring.evaluator import Key, Request
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.scorer import as_docs, entry_update, in_order
from corpmerge.scoring.session import Session
from corpmerge.scoring.subjects import entry_subject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Standing:
    """An entry's reward after m of n fold-A examples: paired estimate and bounds of the full-fold reward."""

    examples: int
    estimate: float
    lower: float
    upper: float


def wilson_upper(successes: float, trials: int, z: float) -> float:
    """One-sided upper Wilson bound of a proportion (1 when there are no trials)."""
    if trials <= 0:
        return 1.0
    p = successes / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / trials + z2 / (4 * trials * trials))
    return min(1.0, (centre + spread) / (1 + z2 / trials))


def standing(values: np.ndarray, base: np.ndarray, z: float) -> Standing:
    """Bounds of the full-fold mean of ``values`` from its first m entries, paired against ``base`` (all n known)."""
    n, m = base.size, values.size
    seen_base = base[:m]
    diff = values - seen_base
    rest, base_rest = n - m, float(base[m:].sum())
    known = float(values.sum()) + base_rest
    if rest == 0:
        reward = known / n
        return Standing(m, reward, reward, reward)
    up, down = float(np.clip(diff, 0, None).sum()), float(np.clip(-diff, 0, None).sum())
    estimate = (known + rest * float(diff.mean())) / n
    upper = min(1.0, (known + rest * wilson_upper(up, m, z)) / n)
    lower = max(0.0, (known - rest * wilson_upper(down, m, z)) / n)
    return Standing(m, estimate, lower, upper)


def race_order(docs: Docs, seed: int) -> list[Key]:
    """Fold A's examples in a fixed shuffled order, so every prefix mixes all tasks."""
    keys = [(task, doc) for task in sorted(docs) for doc in docs[task]]
    order = np.random.default_rng([seed, 3]).permutation(len(keys))
    return [keys[i] for i in order]


def stage_sizes(n: int, spec: RacingSpec) -> list[int]:
    """Prefix sizes of the stages; the last is always the whole fold."""
    sizes = [max(1, math.ceil(f * n)) for f in spec.stages] if spec.enabled else []
    return sorted({s for s in sizes if s < n} | {n})


def survivors(standings: dict[int, Standing], keep: int) -> set[int]:
    """Entries (by index) not yet beaten for certain by at least ``keep`` others (bounds on each reward alone)."""
    lowers = np.sort(np.array([s.lower for s in standings.values()]))[::-1]
    if keep >= lowers.size:
        return set(standings)
    bar = lowers[keep - 1]  # the keep-th largest lower bound
    return {i for i, s in standings.items() if s.upper >= bar}


def dominated(values: np.ndarray, n: int, z: float) -> np.ndarray:
    """``out[j, i]``: entry j's full-fold reward exceeds entry i's, with one-sided confidence ``z``.

    ``values`` holds every alive entry's scores on the same first m of n examples. The full-fold
    difference is D = Σ_seen (v_j − v_i) + Σ_rest (v_j − v_i); its estimate n·d̄ has standard error
    n·s·√((n − m)/(m(n − 1))) (sampling without replacement), s the sd of the per-example differences
    with one extra disagreement added (so pairs that never disagreed are never separated). j beats i
    when n·d̄ − z·SE > 0.
    """
    k, m = values.shape
    if m >= n:
        means = values.mean(axis=1)
        return means[:, None] > means[None, :]
    diffs = values[:, None, :] - values[None, :, :]  # [j, i, example]
    mean = diffs.mean(axis=2)
    second = ((diffs**2).sum(axis=2) + 1.0) / (m + 1)
    sd = np.sqrt(np.maximum(second - mean**2, 0.0))
    se = n * sd * math.sqrt((n - m) / (m * max(1, n - 1)))
    return n * mean - z * se > 0


def race_cut(values: np.ndarray, n: int, z: float, keep: int, standings: list[Standing]) -> np.ndarray:
    """Which alive entries stop: beaten for certain by at least ``keep`` others, pairwise or by their own bounds."""
    beaten_by = dominated(values, n, z).sum(axis=0)
    by_bounds = survivors(dict(enumerate(standings)), keep)
    return np.array([beaten_by[i] >= keep or i not in by_bounds for i in range(values.shape[0])])


def together(cut: np.ndarray, groups: list[int]) -> np.ndarray:
    """``cut`` where every member of a group (a mirrored pair: entries sharing a seed) is cut; no one stops alone."""
    kept = {g for g, stop in zip(groups, cut) if not stop}
    return np.array([g not in kept for g in groups], dtype=bool)


def entries_to_keep(size: int, quantile: float | None, top_k: int) -> int:
    """How many entries any consumer may use: elites of the smallest grid quantile (ties kept), RandOpt's top K."""
    elites = size - math.floor(quantile * (size - 1)) if quantile is not None else 1
    return max(1, elites, top_k)


def rewarded(entry: Entry, s: Standing) -> Entry:
    return Entry(entry.seed, entry.sigma, s.estimate)


def staged_race(
    session: Session,
    order: list[Key],
    sizes: list[int],
    racers: list[int],
    request: Callable[[int, Docs], Request],
    cut: Callable[[list[int], np.ndarray], np.ndarray],
    what: str,
    field: str = "correct",
) -> dict[int, np.ndarray]:
    """Score ``racers`` on the prefixes ``order[:m]`` for m in ``sizes`` (the last: the whole fold), one batch a stage.

    After a stage short of the whole fold, ``cut(alive, values)`` (``values[k]``: alive racer k's scores on the
    prefix) says which stop. Returns each racer's scores on the prefix it reached: their length is the examples it rests on.
    """
    n = len(order)
    reached: dict[int, np.ndarray] = {}
    alive = list(racers)
    for stage, m in enumerate(sizes, 1):
        if not alive:
            break
        prefix = as_docs(order[:m])
        results = session.evaluate([request(i, prefix) for i in alive], f"{what}: stage {stage}/{len(sizes)} ({m} of {n} examples)")
        values = np.array([in_order(scores, order[:m], field) for scores in results]).reshape(len(alive), m)
        reached.update(zip(alive, values))
        if m < n:
            alive = [i for i, stop in zip(alive, cut(alive, values)) if not stop]
            log.info("%s: stage %d, %d of %d examples; %d continue, %d stopped", what, stage, m, n, len(alive), len(racers) - len(alive))
    return reached


def score_population(session: Session, entries: list[Entry], keep: int = 1) -> list[Entry]:
    """Every entry with its fold-A reward (mean reward metric), racing the ones not given in the recipe."""
    return race_population(session, entries, keep)[0]


def race_population(session: Session, entries: list[Entry], keep: int = 1) -> tuple[list[Entry], dict[str, Any]]:
    """Entries with fold-A rewards, and the race's summary (stages, entries stopped, example-evaluations).

    The unrewarded entries race on fold A against the ``keep`` best (``race_cut``); a mirrored pair (s, ±σ) is
    kept or stopped together (``together``). With racing off every entry is scored on the whole fold.
    """
    spec = session.recipe.scoring.racing
    docs = session.folds["A"]
    order = race_order(docs, session.recipe.scoring.support.split_seed)
    n = len(order)
    todo = [i for i, e in enumerate(entries) if e.reward is None]
    groups = mirror_groups(entries)
    base = in_order(session.scores(Request("base", "A", docs), "the base"), order, "value") if todo else None

    def request(i: int, prefix: Docs) -> Request:
        return Request(entry_subject(entries[i]), "A", prefix, entry_update(entries[i]), {"seed": entries[i].seed, "sigma": entries[i].sigma})

    def cut(alive: list[int], values: np.ndarray) -> np.ndarray:
        standings = [standing(row, base, spec.z) for row in values]
        return together(race_cut(values, n, spec.z, keep, standings), [groups[i] for i in alive])

    sizes = stage_sizes(n, spec)
    reached = staged_race(session, order, sizes, todo, request, cut, "scoring population", "value")
    out = [rewarded(e, standing(reached[i], base, spec.z)) if i in reached else e for i, e in enumerate(entries)]
    examples = {i: len(values) for i, values in reached.items()}
    summary = {
        "enabled": spec.enabled,
        "stages": sizes,
        "z": spec.z,
        "keep": keep,
        "scored": len(todo),
        "stopped": sum(m < n for m in examples.values()),
        "example_evaluations": int(sum(examples.values())),
        "example_evaluations_without_racing": len(todo) * n,
        "examples": [examples.get(i, n) for i in range(len(entries))],
    }
    return out, summary
