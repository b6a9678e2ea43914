import numpy as np
import pytest

from conftest import scoring_recipe
from corpmerge.amplitudes import Cloud
from corpmerge.gate.paired import PairedStats
from corpmerge.plan import check_recipe
from corpmerge.gate.procedure import Candidate, GateDecision
from corpmerge.gate.stage2 import iterate
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.session import open_session
from corpmerge.gate.proposals import low_rank_share, principal_directions, propose, shifted


@pytest.mark.parametrize("floor", [0.2, 0.5, 0.9])
def test_low_rank_share_of_proposal_variance_is_one_minus_floor(floor):
    rng = np.random.default_rng(0)
    cloud = Cloud(np.arange(12), np.diag(rng.uniform(1e-3, 3e-3, 12)), rng.uniform(size=12))
    directions = principal_directions(cloud, np.arange(12), rng.uniform(0.5, 1.5, 12), rank=8)
    assert directions.vectors.shape == (8, 12)
    assert np.allclose(np.linalg.norm(directions.vectors, axis=1), 1)
    seeds, vectors = propose(directions, 20000, 0.002, floor, rng, set(range(12)))
    assert len(set(seeds.tolist())) == seeds.size  # fresh seeds never collide
    assert low_rank_share(vectors, 12) == pytest.approx(1 - floor, abs=0.01)
    # total per-coordinate variance of a proposal is σ², as for a stage-1 entry of scale σ
    assert np.mean((vectors**2).sum(axis=1)) == pytest.approx(0.002**2, rel=0.02)


def test_shifted_adds_the_centre():
    from corpmerge.amplitudes import Amplitudes

    centre = Amplitudes(np.array([3, 5]), np.array([0.1, 0.2]))
    out = shifted(centre, np.array([5, 9]), np.array([[1.0, 2.0]]))[0]
    assert out.seeds.tolist() == [3, 5, 9] and out.values.tolist() == [0.1, 1.2, 2.0]


def _stage1(session, recipe):
    checked = check_recipe(recipe, needs_rewards=False)
    entries = [Entry(e.seed, e.sigma, 0.1 * i) for i, e in enumerate(checked.entries)]
    cloud = Cloud.from_entries(entries)
    point = checked.grid[0]
    result = checked.method(cloud, point)
    cand = Candidate(point.model_dump(by_alias=True), result, "stage1")
    return checked, cloud, GateDecision(cand, 1.0, [cand], "accepted")


def test_rejected_rounds_leave_the_centre_unchanged(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", gate={"enabled": True, "z": 100.0},
                          parameters={"quantile": 0.5}, iterate={"rounds": 3, "local_size": 4, "rank": 2})
    recipe = parse_recipe(data)
    session = open_session(recipe)
    try:
        checked, cloud, decision = _stage1(session, recipe)
        final, rounds = iterate(session, checked, cloud, decision)
        assert len(rounds) == 1 and not rounds[0]["accepted"]  # paper §4.3: stops at the first rejected round
        before, after = decision.result.final_amplitudes(), final.final_amplitudes()
        assert np.array_equal(before.seeds, after.seeds) and np.array_equal(before.values, after.values)
        assert session.store.subjects("A1") and not session.store.subjects("A2")
    finally:
        session.close()


def test_patience_allows_that_many_more_rejected_rounds(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", gate={"enabled": True, "z": 100.0},
                          parameters={"quantile": 0.5}, iterate={"rounds": 3, "local_size": 4, "rank": 2, "patience": 1})
    recipe = parse_recipe(data)
    session = open_session(recipe)
    try:
        checked, cloud, decision = _stage1(session, recipe)
        _, rounds = iterate(session, checked, cloud, decision)
        assert [r["accepted"] for r in rounds] == [False, False]
        assert session.store.subjects("A1") and session.store.subjects("A2")  # each round on fresh folds
    finally:
        session.close()


def test_accepted_round_moves_the_centre_and_keeps_the_lineage(tmp_path, tiny_model, tiny_task, monkeypatch):
    import corpmerge.gate.procedure as gating

    def always_passes(base, candidate, z, penalty):
        return PairedStats(len(base), 1, 0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)

    monkeypatch.setattr(gating, "paired_stats", always_passes)
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", parameters={"quantile": 0.5},
                          iterate={"rounds": 3, "local_size": 4, "rank": 2})
    recipe = parse_recipe(data)
    session = open_session(recipe)
    try:
        checked, cloud, decision = _stage1(session, recipe)
        final, rounds = iterate(session, checked, cloud, decision)
        assert [r["accepted"] for r in rounds] == [True, True, True]  # up to `rounds` accepted steps
        assert all(r["multiplier"] == 4.0 for r in rounds)  # the largest probe multiplier passes
        amps = final.final_amplitudes()
        new_seeds = set(amps.nonzero().seeds.tolist()) - set(cloud.seeds.tolist())
        assert new_seeds  # fresh local seeds are in the lineage: θ = θ₀ + Σ aₛ ε(s) still
        session.scorer.apply(final)  # the final update is a plain amplitude table the scorer/writer can apply
        session.scorer.restore()
    finally:
        session.close()


def test_run_with_iterate_end_to_end_writes_the_stage2_model(tmp_path, tiny_model, tiny_task, monkeypatch):
    import yaml
    from transformers import AutoModelForCausalLM

    import corpmerge.gate.procedure as gating
    from corpmerge.pipeline import run_recipe

    def always_passes(base, candidate, z, penalty):
        return PairedStats(len(base), 1, 0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)

    monkeypatch.setattr(gating, "paired_stats", always_passes)  # make every gate pass: this tests the plumbing
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, parameters={"quantile": 0.5},
                          iterate={"rounds": 2, "local_size": 9, "rank": 2}, evaluate={"limit": 8})
    report = run_recipe(parse_recipe(data))
    assert report["stage2"]["accepted"] == 2 and len(report["stage2"]["rounds"]) == 2
    assert set(report["chosen"]) == {"A", "B", "C"} and "stage2" in report["timings_s"]
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    population_seeds = {p["seed"] for p in lineage["recipe"]["population"]}
    assert {row["seed"] for row in lineage["lineage"]} - population_seeds  # local seeds are part of the lineage
    assert lineage["merge"]["elite_seeds"] is None and lineage["merge"]["info"]["stage2_round"] == 2
    assert "stage 2" in (out / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(out)


def test_directions_live_only_on_the_elites_seeds():
    rng = np.random.default_rng(1)
    cloud = Cloud(np.arange(10), np.diag(rng.uniform(1e-3, 3e-3, 10)), rng.uniform(size=10))
    elites = np.array([2, 5, 7, 9])
    directions = principal_directions(cloud, elites, np.ones(4), rank=8)
    outside = np.setdiff1d(np.arange(10), elites)
    assert np.all(directions.vectors[:, outside] == 0)
    seeds, vectors = propose(directions, 5, 0.002, 0.5, rng, set(range(10)))
    assert np.all(vectors[:, outside] == 0)  # so a proposal costs |elites| + 1 noise draws, not |population| + 1
