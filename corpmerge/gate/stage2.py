"""CoRP stage 2 as a procedure: local rounds around the accepted update, each through the gate."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from corpmerge.amplitudes import Cloud
from corpmerge.scoring.folds import round_folds
from corpmerge.gate.procedure import Candidate, GateDecision, gate_candidates, subject_of, subject_of_result
from corpmerge.plan import Checked
from corpmerge.methods import MergeResult
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.scorer import ordered
from corpmerge.scoring.session import Session, suite_counts
from corpmerge.gate.proposals import principal_directions, propose, shifted


def iterate(session: Session, checked: Checked, cloud: Cloud, stage1: GateDecision) -> tuple[MergeResult, list[dict[str, Any]]]:
    """Stage 2 rounds around the accepted stage-1 update; returns the final result and a per-round report.

    Up to ``iterate.rounds`` accepted steps; the iteration stops at the first rejected round (paper §4.3),
    or after ``iterate.patience`` + 1 rejected rounds when a patience is set. Each round draws fresh folds.
    """
    spec, support = session.recipe.iterate, session.recipe.scoring.support
    result = stage1.result
    params = checked.method.params.model_validate(stage1.accepted.params)
    sigma = spec.sigma or float(np.median(cloud.norms()))
    rng = np.random.default_rng([support.split_seed, 2])
    used = {int(s) for s in cloud.seeds}
    source = (cloud, result.elites, result.weights)
    accepted = rejected = 0
    rounds: list[dict[str, Any]] = []
    counts = suite_counts(session.suite)
    for r in range(1, spec.rounds + spec.patience + 1):
        folds = round_folds(counts, support, r)
        centre = result.final_amplitudes()
        seeds, vectors = propose(principal_directions(*source, spec.rank), spec.local_size, sigma, spec.isotropic_floor, rng, used)
        requests = [Request(subject_of(update), f"A{r}", folds["A"], update) for update in shifted(centre, seeds, vectors)]
        results = session.evaluate(requests, f"stage 2 round {r}: local population")
        local_rewards = [float(ordered(scores, folds["A"], "value").mean()) for scores in results]
        local = Cloud(seeds, vectors, np.array(local_rewards))
        step = replace(checked.method(local, params), offset=centre)
        decision = gate_candidates(
            session, [Candidate(params.model_dump(by_alias=True), step, subject_of_result(step))],
            (f"B{r}", folds["B"]), (f"C{r}", folds["C"]), (subject_of(centre), centre), "the current centre",
        )
        rounds.append({
            "round": r, "local_size": spec.local_size, "accepted": decision.accepted is not None,
            "multiplier": decision.multiplier, "reason": decision.reason,
            "local_reward_max": float(np.max(local_rewards)), "local_reward_mean": float(np.mean(local_rewards)),
            "validate": decision.candidates[0].validate.as_dict(),
        })
        if decision.accepted is None:
            rejected += 1
        else:
            result = replace(decision.result, info={"stage2_round": r, "local_size": spec.local_size})
            accepted += 1
            source = (local, step.elites, step.weights)
        if accepted >= spec.rounds or rejected > spec.patience:
            break  # paper §4.3: the iteration stops at the first rejected round (patience 0)
    return result, rounds
