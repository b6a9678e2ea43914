"""The validation gate as a procedure: candidates → paired test on a validate fold → probe multiplier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.scoring.folds import Docs
from corpmerge.gate.paired import PairedStats, paired_stats, pick_multiplier
from corpmerge.plan import Checked
from corpmerge.methods import MergeResult
from corpmerge.progress import task
from corpmerge.scoring.scorer import ordered, update_subject
from corpmerge.scoring.session import Session


@dataclass
class Candidate:
    params: dict[str, Any]
    result: MergeResult
    subject: str
    validate: PairedStats | None = None
    probe: dict[float, PairedStats] = field(default_factory=dict)


def subject_of_result(result: MergeResult) -> str:
    amps = result.final_amplitudes()
    if amps is not None:
        return subject_of(amps)
    return update_subject("update", (result.method, sorted(result.params.items()), result.elites.tobytes(), result.multiplier))


def subject_of(amps: Amplitudes) -> str:
    nz = amps.nonzero()
    return update_subject("update", (nz.seeds.astype(np.int64).tobytes(), nz.values.astype(np.float64).tobytes()))


@dataclass
class GateDecision:
    accepted: Candidate | None
    multiplier: float | None
    candidates: list[Candidate]
    reason: str

    @property
    def result(self) -> MergeResult | None:
        return None if self.accepted is None else self.accepted.result.scaled(self.multiplier)


def run_gate(session: Session, checked: Checked, cloud: Cloud) -> GateDecision:
    """Candidates over the grid (fold-A rewards) → fold B gate → fold C probe multiplier, against the base."""
    candidates: dict[str, Candidate] = {}
    for point in checked.grid:
        result = checked.method(cloud, point)
        candidates.setdefault(subject_of_result(result), Candidate(point.model_dump(by_alias=True), result, subject_of_result(result)))
    folds = session.folds
    return gate_candidates(session, list(candidates.values()), ("B", folds["B"]), ("C", folds["C"]), ("base", None), "the base")


def gate_candidates(
    session: Session, candidates: list[Candidate], validate: tuple[str, Docs], probe: tuple[str, Docs],
    reference: tuple[str, Any], against: str,
) -> GateDecision:
    """Paired gate of each candidate against ``reference`` on the validate fold, then the probe multiplier."""
    gate = session.recipe.gate
    scorer = session.scorer
    (vlabel, vdocs), (plabel, pdocs) = validate, probe
    ref_b = ordered(scorer.scores(reference[0], vlabel, vdocs, reference[1]), vdocs)
    ref_c = ordered(scorer.scores(reference[0], plabel, pdocs, reference[1]), pdocs)
    with task(f"gate: candidates on fold {vlabel}", len(candidates)) as advance:
        for cand in candidates:
            scores = scorer.scores(cand.subject, vlabel, vdocs, cand.result, {"params": cand.params})
            cand.validate = paired_stats(ref_b, ordered(scores, vdocs), gate.z, gate.regression_penalty)
            advance()
    ranked = sorted(candidates, key=lambda c: (c.validate.lcb, c.validate.constructive_score), reverse=True)
    passing = [c for c in ranked if c.validate.passes]
    for cand in passing:
        with task(f"probe: step multipliers on fold {plabel}", len(gate.probe_multipliers)) as advance:
            for m in gate.probe_multipliers:
                scaled = cand.result.scaled(m)
                scores = scorer.scores(subject_of_result(scaled), plabel, pdocs, scaled, {"params": cand.params, "multiplier": m})
                cand.probe[m] = paired_stats(ref_c, ordered(scores, pdocs), gate.z, gate.regression_penalty)
                advance()
        chosen = pick_multiplier({m: s.lcb for m, s in cand.probe.items()})
        if chosen is not None:
            return GateDecision(cand, chosen, ranked, "accepted")
    if not passing:
        top = ranked[0].validate
        reason = (
            f"no candidate beat {against} on fold {vlabel} (best of {len(ranked)}: fixes {top.fixes}, regressions {top.regressions}, "
            f"S {top.constructive_score:+.4f}, LCB {top.lcb:+.4f}; both must be > 0)"
        )
    else:
        reason = f"{len(passing)} candidate(s) passed on fold {vlabel}, but no probe multiplier had LCB > 0 on fold {plabel}"
    return GateDecision(None, None, ranked, reason)
