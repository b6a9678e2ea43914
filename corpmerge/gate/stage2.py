"""CoRP stage 2 as a procedure (paper §4.3): rounds of the stage-1 procedure on local populations.

Round r draws P = ``iterate.local_size`` local perturbations around the current centre (``propose``),
scores them on the round's fresh fold A, and runs the whole gate on that local population
(``run_gate``): one candidate per grid point of the recipe's ``parameters``, each built from those
fold-A rewards alone as centre + step, raced and ranked by S on the round's fold B, the top one
gated (S > 0, LCB > 0) and probed on the round's fold C, all paired against the centre. "Only the
sampling distribution changes." An accepted round moves the centre; the iteration stops at the
first rejected round.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from corpmerge.amplitudes import Cloud
from corpmerge.comparison import RoundRecord
from corpmerge.gate.procedure import GateDecision, Reference, candidate_record, run_gate
from corpmerge.gate.proposals import principal_directions, propose, shifted
from corpmerge.methods import MergeResult
from corpmerge.plan import Checked
from corpmerge.recipe import IterateSpec
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.folds import round_folds
from corpmerge.scoring.scorer import ordered
from corpmerge.scoring.session import Session, suite_counts
from corpmerge.scoring.subjects import update_subject

log = logging.getLogger(__name__)


def local_sigma(spec: IterateSpec, sigmas: np.ndarray, rewards: np.ndarray) -> float:
    """The first round's σ: ``iterate.sigma``, else the population's median σ (``fixed``) or the σ level whose
    entries have the best mean fold-A reward (``halve``, the reference code's start)."""
    if spec.sigma is not None:
        return spec.sigma
    sigmas = np.abs(sigmas)  # a mirrored member's −σ is the scale σ
    if spec.sigma_schedule == "halve":
        levels = np.unique(sigmas)
        return float(levels[int(np.argmax([rewards[sigmas == s].mean() for s in levels]))])
    return float(np.median(sigmas))


def iterate(session: Session, checked: Checked, cloud: Cloud, stage1: GateDecision) -> tuple[MergeResult, list[RoundRecord]]:
    """Stage-2 rounds around the accepted stage-1 update; returns the final result and a per-round report.

    Up to ``iterate.rounds`` accepted rounds; the iteration stops at the first rejected round (paper §4.3), or
    after ``iterate.patience`` + 1 rejected rounds when a patience is set. Every round (accepted or not) draws
    fresh folds. σ stays fixed, except under ``sigma_schedule: halve``, which halves it after each rejection.
    """
    spec, support = session.recipe.iterate, session.recipe.scoring.support
    result = stage1.result
    sigma = local_sigma(spec, np.array([e.sigma for e in checked.entries]), cloud.rewards)
    rng = np.random.default_rng([support.split_seed, 2])
    used = {int(s) for s in cloud.seeds}
    source = (cloud, stage1.accepted.result.elites, stage1.accepted.result.weights)
    accepted = rejected = 0
    rounds: list[RoundRecord] = []
    counts = suite_counts(session.suite)
    for r in range(1, spec.rounds + spec.patience + 1):
        folds = round_folds(counts, support, r, session.suite.cluster_labels())
        centre = result.final_amplitudes()
        seeds, vectors = propose(principal_directions(*source, spec.rank), spec.local_size, sigma, spec.isotropic_floor, rng, used)
        requests = [Request(update_subject(update), f"A{r}", folds["A"], update) for update in shifted(centre, seeds, vectors)]
        scores = session.evaluate(requests, f"stage 2 round {r}: local population on fold A{r}")
        local = Cloud(seeds, vectors, np.array([float(ordered(s, folds["A"], "value").mean()) for s in scores]))
        decision = run_gate(
            session,
            checked,
            local,
            ((f"B{r}", folds["B"]), (f"C{r}", folds["C"])),
            Reference(update_subject(centre), centre, "the current centre"),
        )
        top = decision.accepted or decision.candidates[0]
        rounds.append(
            RoundRecord(
                round=r,
                sigma=sigma,
                local_size=spec.local_size,
                accepted=decision.accepted is not None,
                params=decision.accepted.params if decision.accepted else None,
                multiplier=decision.multiplier,
                reason=decision.reason,
                candidates_probed=decision.probed,
                local_reward_max=float(local.rewards.max()),
                local_reward_mean=float(local.rewards.mean()),
                validate=top.validate.as_dict(),
                ess=top.result.ess,
                step_rms=top.result.step_rms,
                candidates=[candidate_record(c) for c in decision.candidates],
            )
        )
        log.info("stage 2 round %d (σ %.3g): %s", r, sigma, "accepted" if decision.accepted else decision.reason)
        if decision.accepted is None:
            rejected += 1
            if spec.sigma_schedule == "halve":
                sigma /= 2
        else:
            result = replace(decision.result, info={"stage2_round": r, "local_size": spec.local_size})
            accepted += 1
            source = (local, decision.accepted.result.elites, decision.accepted.result.weights)
        if accepted >= spec.rounds or rejected > spec.patience:
            break  # paper §4.3: the iteration stops at the first rejected round (patience 0)
    return result, rounds
