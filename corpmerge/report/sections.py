"""A run's report, section by section: each built from what one phase of ``corpmerge.pipeline.run_recipe`` returned,
typed by ``corpmerge.output.report_schema``."""

from __future__ import annotations

from typing import Any

import numpy as np

from corpmerge.comparison import CandidateRecord, RoundRecord
from corpmerge.gate.procedure import GateDecision, candidate_record
from corpmerge.methods import MergeMethod
from corpmerge.output.folder import population_summary
from corpmerge.output.report_schema import Gate, Population, Stage2
from corpmerge.population import Entry
from corpmerge.recipe import GateSpec, IterateSpec


def population_section(entries: list[Entry], method: MergeMethod, decision: GateDecision, rank: int | None = None) -> Population:
    """Size, σ levels (and ``population.rank``) and fold-A rewards; with an accepted candidate, its elite threshold quantile_q(r)."""
    rewards = [e.reward for e in entries]
    fields: dict[str, Any] = {**population_summary(entries, rank), "rewards": rewards}
    quantile = method.elite_quantile(decision.accepted.params) if decision.accepted is not None else None
    if quantile is not None:
        fields["elite_threshold"] = float(np.quantile(rewards, quantile))
    return Population(**fields)


def gate_section(spec: GateSpec, decision: GateDecision) -> Gate:
    """The gate's outcome; when it accepted, the candidate's grid point, step and validate/probe statistics."""
    fields: dict[str, Any] = {
        "enabled": spec.enabled,
        "accepted": decision.accepted is not None,
        "reason": decision.reason,
        "candidates_probed": decision.probed,
        "fallback": spec.fallback,
    }
    cand = decision.accepted
    if cand is not None:
        fields.update(params=cand.params, multiplier=decision.multiplier, ess=cand.result.ess, step_rms=decision.result.step_rms)
    if cand is not None and cand.validate is not None:
        fields.update(
            fixes=cand.validate.fixes,
            regressions=cand.validate.regressions,
            constructive_score=cand.validate.constructive_score,
            lcb=cand.validate.lcb,
            probe_lcb=cand.probe[decision.multiplier].lcb,
            probe={str(m): s.as_dict() for m, s in cand.probe.items()},
        )
    probed = [c for c in decision.candidates if c.probe]
    if cand is None and probed:  # abstained at the probe: keep the fold-C statistics of the (last) candidate probed
        fields["probe"] = {str(m): s.as_dict() for m, s in probed[-1].probe.items()}
    return Gate(**fields)


def candidates_section(decision: GateDecision) -> list[CandidateRecord]:
    """Every candidate the gate tried, as ``candidate_record`` writes it."""
    return [candidate_record(c) for c in decision.candidates]


def stage2_section(spec: IterateSpec, rounds: list[RoundRecord]) -> Stage2:
    """Stage 2's rounds (``corpmerge.gate.stage2.iterate``) and how many were accepted and rejected."""
    return Stage2(
        rounds=rounds,
        accepted=sum(r.accepted for r in rounds),
        rejected=sum(not r.accepted for r in rounds),
        sigma_schedule=spec.sigma_schedule,
    )
