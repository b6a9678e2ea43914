"""The validation gate as the paper defines it: rank candidates on fold B by S, gate the top one, calibrate its step on fold C.

The same procedure serves stage 1 (candidates from the population's fold-A rewards, paired against
the base on folds B and C) and every stage-2 round (candidates from the local population's rewards
on the round's fold A, each the centre plus a step, paired against the centre on the round's folds).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.comparison import CandidateRecord
from corpmerge.gate.paired import PairedStats, paired_stats, pick_multiplier
from corpmerge.methods import MergeMethod, MergeResult, MethodParams
from corpmerge.plan import Checked
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.racing import race_order, stage_sizes, staged_race, wilson_upper
from corpmerge.scoring.scorer import in_order, ordered
from corpmerge.scoring.session import Session
from corpmerge.scoring.subjects import update_subject


@dataclass
class Candidate:
    params: dict[str, Any]
    result: MergeResult
    subject: str
    validate: PairedStats | None = None
    probe: dict[float, PairedStats] = field(default_factory=dict)
    stopped_at: int | None = None  # racing stopped it after this many validate examples
    family: str = ""  # the grid point without its step parameter: candidates of one family differ only by the factor α


@dataclass
class GateDecision:
    accepted: Candidate | None
    multiplier: float | None
    candidates: list[Candidate]
    reason: str
    probed: int = 0  # candidates that saw the probe fold (1 under the paper's procedure)

    @property
    def result(self) -> MergeResult | None:
        return None if self.accepted is None else self.accepted.result.scaled(self.multiplier)


@dataclass(frozen=True)
class Reference:
    """What the candidates are paired against: the base (``update`` None), or a stage-2 centre, to which
    every candidate's step is added (candidate = centre + step)."""

    subject: str
    update: Amplitudes | None
    name: str


BASE = Reference("base", None, "the base")


def build_candidates(method: MergeMethod, grid: list[MethodParams], cloud: Cloud, offset: Amplitudes | None = None) -> list[Candidate]:
    """One candidate per grid point, from ``cloud`` alone (its rewards: fold-A rewards), as ``offset`` + step when
    an offset is given; grid points that build the same update are one candidate."""
    candidates: dict[str, Candidate] = {}
    for point in grid:
        result = method(cloud, point)
        if offset is not None:
            result = replace(result, offset=offset)
        subject = update_subject(result)
        candidates.setdefault(subject, Candidate(point.model_dump(by_alias=True), result, subject, family=method.family(point)))
    return list(candidates.values())


def run_gate(
    session: Session,
    checked: Checked,
    cloud: Cloud,
    folds: tuple[tuple[str, Docs], tuple[str, Docs]] | None = None,
    reference: Reference = BASE,
) -> GateDecision:
    """Candidates over the grid (the cloud's fold-A rewards) → validate-fold gate → probe-fold multiplier, against ``reference``.

    ``folds`` are the (label, docs) of the validate and probe folds: by default the session's B and C.
    """
    validate, probe = folds or (("B", session.folds["B"]), ("C", session.folds["C"]))
    candidates = build_candidates(checked.method, checked.grid, cloud, reference.update)
    return gate_candidates(session, candidates, validate, probe, reference)


def step_size(cand: Candidate) -> float:
    """The candidate's step, for ties in S: per-coordinate RMS of the step (without a stage-2 centre) for amplitude
    updates; the multiplier of a tensor-wise Δ₁ otherwise."""
    rms = cand.result.step_rms
    return rms if rms is not None else cand.result.multiplier


def candidate_record(cand: Candidate) -> CandidateRecord:
    """A candidate as the report shows it: parameters, validate-fold statistics, and what its weights did
    (ESS = 1/Σw², the step's RMS, the method's own diagnostics)."""
    result, stats = cand.result, cand.validate
    return CandidateRecord(
        params=cand.params,
        validate=stats.as_dict() if stats is not None else None,
        stopped=cand.stopped_at is not None,
        validate_examples=stats.n if stats is not None else None,
        ess=result.ess,
        elites=int(result.elites.size),
        step_rms=result.step_rms,
        **result.diagnostics,
    )


def rank_key(cand: Candidate) -> tuple[float, float, float]:
    """Paper §4.2 / C.3: rank by the constructive score S on the validate fold; ties: higher LCB, then the smaller step."""
    return (-cand.validate.constructive_score, -cand.validate.lcb, step_size(cand))


def gate_candidates(
    session: Session,
    candidates: list[Candidate],
    validate: tuple[str, Docs],
    probe: tuple[str, Docs],
    reference: Reference = BASE,
) -> GateDecision:
    """The paper's gate (§4.2, App. C.3/C.5) of ``candidates`` against ``reference``.

    1. Every candidate is scored on the validate fold (raced: see ``race_candidates``) and ranked by S
       (ties: higher LCB, then the smaller step).
    2. The top candidate passes only if S > 0 and LCB > 0; otherwise abstain.
    3. Only that candidate sees the probe fold: the largest multiplier m with LCB(m·Δ) > 0 is the step;
       none → abstain. With ``gate.fallback`` (not the paper's procedure) the next passing candidate is
       probed instead, and ``probed`` counts how many candidates saw the probe fold.

    Where a task declares ``metadata.cluster_by`` every LCB is cluster-robust (``corpmerge.gate.paired.clustered_se``).
    """
    gate = session.recipe.gate
    (vlabel, vdocs), (plabel, pdocs) = validate, probe
    ranked = race_candidates(session, candidates, vlabel, vdocs, reference)
    top = ranked[0].validate
    if not top.passes:
        reason = (
            f"the top candidate on fold {vlabel} did not beat {reference.name} (best of {len(ranked)} by S: fixes {top.fixes}, "
            f"regressions {top.regressions}, S {top.constructive_score:+.4f}, LCB {top.lcb:+.4f}{_clustered(top)}; both must be > 0)"
        )
        return GateDecision(None, None, ranked, reason)

    def probe_multiplier(cand: Candidate) -> float | None:
        multipliers = sorted(gate.probe_multipliers)
        requests = [Request(reference.subject, plabel, pdocs, reference.update)] + [
            Request(update_subject(cand.result.scaled(m)), plabel, pdocs, cand.result.scaled(m), {"params": cand.params, "multiplier": m}) for m in multipliers
        ]
        ref_c, *results = session.evaluate(requests, f"probe: step multipliers on fold {plabel}")
        clusters = session.suite.clusters(canonical_keys(pdocs))
        for m, scores in zip(multipliers, results):
            cand.probe[m] = paired_stats(ordered(ref_c, pdocs), ordered(scores, pdocs), gate.z, gate.regression_penalty, clusters)
        return pick_multiplier({m: s.lcb for m, s in cand.probe.items()})

    chosen, multiplier, probed = select(ranked, probe_multiplier, gate.fallback)
    if chosen is not None:
        return GateDecision(chosen, multiplier, ranked, "accepted", probed)
    reason = f"the top candidate passed on fold {vlabel}, but no probe multiplier had LCB > 0 on fold {plabel}"
    if probed > 1:
        reason = f"{probed} passing candidates were probed (gate.fallback), but none had a multiplier with LCB > 0 on fold {plabel}"
    return GateDecision(None, None, ranked, reason, probed)


def _clustered(stats: PairedStats) -> str:
    """How a clustered LCB was computed, for a message ('' when per-example)."""
    return "" if stats.clusters is None else f" clustered over {stats.clusters} clusters (per-example {stats.lcb_per_example:+.4f})"


def select(
    ranked: list[Candidate],
    probe: Callable[[Candidate], float | None],
    fallback: bool = False,
) -> tuple[Candidate | None, float | None, int]:
    """The paper's choice from candidates ranked on the validate fold: the top one must pass (S > 0, LCB > 0),
    then ``probe`` gives its multiplier (None: abstain). With ``fallback`` the next passing, fully evaluated
    candidate is probed instead of abstaining. Returns (candidate, multiplier, candidates probed)."""
    if not ranked or not ranked[0].validate.passes:
        return None, None, 0
    queue = [c for c in ranked if c.validate.passes and c.stopped_at is None] if fallback else ranked[:1]
    for probed, cand in enumerate(queue, 1):
        multiplier = probe(cand)
        if multiplier is not None:
            return cand, multiplier, probed
    return None, None, len(queue)


def canonical_keys(docs: Docs) -> list[tuple[str, int]]:
    """The examples of ``docs`` in the order ``ordered`` gives their scores."""
    return [(task, doc) for task in sorted(docs) for doc in docs[task]]


def race_candidates(
    session: Session,
    candidates: list[Candidate],
    label: str,
    docs: Docs,
    reference: Reference = BASE,
) -> list[Candidate]:
    """Score candidates on the validate fold in stages, stopping those that cannot rank first; return them ranked.

    After m of n examples a candidate with f fixes and g regressions has a full-fold S of at most
    (f − λg + (n − m)·W⁺(f/m))/n and at least (f − λg − λ(n − m)·W⁺(g/m))/n, W⁺ the one-sided Wilson bound
    at ``scoring.racing.z``. A candidate stops when its upper bound is ≤ 0 (it cannot pass) or below another
    candidate's lower bound (it cannot rank first). So, with that confidence, the gate takes the decision the
    full evaluation would: the top candidate is never stopped, and a stopped one could not have passed.
    Stopped candidates are ranked after the survivors by their partial statistics.
    """
    gate = session.recipe.gate
    racing = session.recipe.scoring.racing
    order = race_order(docs, session.recipe.scoring.support.split_seed + 1)
    n = len(order)
    ref = in_order(
        session.scores(Request(reference.subject, label, docs, reference.update), "the reference" if reference.update is not None else "the base"), order
    )
    field = sorted(candidates, key=lambda c: c.family)  # α-siblings adjacent: 2ᵏ·Δ reuses the last Δ
    clusters = session.suite.clusters(order)  # None unless a task declares metadata.cluster_by

    def stats(values: np.ndarray) -> PairedStats:
        return paired_stats(ref[: values.size], values, gate.z, gate.regression_penalty, clusters[: values.size] if clusters else None)

    def request(i: int, prefix: Docs) -> Request:
        return Request(field[i].subject, label, prefix, field[i].result, {"params": field[i].params})

    def cut(alive: list[int], values: np.ndarray) -> np.ndarray:
        bounds = [_s_bounds(stats(row), n, gate.regression_penalty, racing.z) for row in values]
        best_lower = max(lo for lo, _ in bounds)
        return np.array([hi <= 0 or hi < best_lower for _, hi in bounds])

    sizes = stage_sizes(n, racing) if gate.racing else [n]
    reached = staged_race(session, order, sizes, list(range(len(field))), request, cut, f"gate: candidates on fold {label}")
    for i, cand in enumerate(field):
        cand.validate = stats(reached[i])
        cand.stopped_at = reached[i].size if reached[i].size < n else None
    finished = sorted([c for c in candidates if c.stopped_at is None], key=rank_key)
    stopped = sorted([c for c in candidates if c.stopped_at is not None], key=rank_key)
    return finished + stopped


def _s_bounds(stats: PairedStats, n: int, penalty: float, z: float) -> tuple[float, float]:
    m, rest = stats.n, n - stats.n
    known = stats.fixes - penalty * stats.regressions
    upper = (known + rest * wilson_upper(stats.fixes, m, z)) / n
    lower = (known - penalty * rest * wilson_upper(stats.regressions, m, z)) / n
    return lower, upper
