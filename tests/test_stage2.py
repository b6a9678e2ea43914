import numpy as np
import pytest
from conftest import scoring_recipe

from corpmerge.amplitudes import Cloud
from corpmerge.gate.paired import PairedStats
from corpmerge.gate.procedure import Candidate, GateDecision
from corpmerge.gate.proposals import low_rank_share, principal_directions, propose, shifted
from corpmerge.gate.stage2 import iterate
from corpmerge.plan import check_recipe
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.session import open_session


@pytest.mark.parametrize("floor", [0.2, 0.5, 0.9])
def test_low_rank_share_of_proposal_variance_is_one_minus_floor(floor):
    rng = np.random.default_rng(0)
    cloud = Cloud(np.arange(12), np.diag(rng.uniform(1e-3, 3e-3, 12)), rng.uniform(size=12))
    directions = principal_directions(cloud, np.arange(12), rng.uniform(0.5, 1.5, 12), rank=8)
    assert directions.vectors.shape == (8, 12)
    assert np.allclose(np.linalg.norm(directions.vectors, axis=1), 1)
    # 20,000 proposals in 10 draws of 2,000: each draw's matrix is dense over its fresh seeds (size × (12 + size)),
    # so one draw of 20,000 would hold 3.2 GB; the estimates below pool the draws.
    used, fresh, shares, totals = set(range(12)), [], [], []
    for _ in range(10):
        seeds, vectors = propose(directions, 2000, 0.002, floor, rng, used)
        assert seeds[:12].tolist() == directions.seeds.tolist()
        fresh += seeds[12:].tolist()
        shares.append(low_rank_share(vectors, 12))
        totals.append((vectors**2).sum(axis=1))
    assert len(set(fresh)) == len(fresh) == 20000 and not set(fresh) & set(range(12))  # fresh seeds never collide
    assert np.mean(shares) == pytest.approx(1 - floor, abs=0.01)
    # total per-coordinate variance of a proposal is σ², as for a stage-1 entry of scale σ
    assert np.mean(np.concatenate(totals)) == pytest.approx(0.002**2, rel=0.02)


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
    data = scoring_recipe(
        tiny_model,
        tiny_task,
        tmp_path / "out",
        gate={"enabled": True, "z": 100.0},
        parameters={"quantile": 0.5},
        iterate={"rounds": 3, "local_size": 4, "rank": 2},
    )
    recipe = parse_recipe(data)
    session = open_session(recipe)
    try:
        checked, cloud, decision = _stage1(session, recipe)
        final, rounds = iterate(session, checked, cloud, decision)
        assert len(rounds) == 1 and not rounds[0].accepted  # paper §4.3: stops at the first rejected round
        before, after = decision.result.final_amplitudes(), final.final_amplitudes()
        assert np.array_equal(before.seeds, after.seeds) and np.array_equal(before.values, after.values)
        assert session.store.subjects("A1") and not session.store.subjects("A2")
    finally:
        session.close()


def test_patience_allows_that_many_more_rejected_rounds(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(
        tiny_model,
        tiny_task,
        tmp_path / "out",
        gate={"enabled": True, "z": 100.0},
        parameters={"quantile": 0.5},
        iterate={"rounds": 3, "local_size": 4, "rank": 2, "patience": 1},
    )
    recipe = parse_recipe(data)
    session = open_session(recipe)
    try:
        checked, cloud, decision = _stage1(session, recipe)
        _, rounds = iterate(session, checked, cloud, decision)
        assert [r.accepted for r in rounds] == [False, False]
        assert session.store.subjects("A1") and session.store.subjects("A2")  # each round on fresh folds
    finally:
        session.close()


def test_accepted_round_moves_the_centre_and_keeps_the_lineage(tmp_path, tiny_model, tiny_task, monkeypatch):
    import corpmerge.gate.procedure as gating

    def always_passes(base, candidate, z, penalty, clusters=None):
        return PairedStats(len(base), 1, 0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)

    monkeypatch.setattr(gating, "paired_stats", always_passes)
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", parameters={"quantile": 0.5}, iterate={"rounds": 3, "local_size": 4, "rank": 2})
    recipe = parse_recipe(data)
    session = open_session(recipe)
    try:
        checked, cloud, decision = _stage1(session, recipe)
        final, rounds = iterate(session, checked, cloud, decision)
        assert [r.accepted for r in rounds] == [True, True, True]  # up to `rounds` accepted steps
        assert all(r.multiplier == 4.0 for r in rounds)  # the largest probe multiplier passes
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

    def always_passes(base, candidate, z, penalty, clusters=None):
        return PairedStats(len(base), 1, 0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)

    monkeypatch.setattr(gating, "paired_stats", always_passes)  # make every gate pass: this tests the plumbing
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, parameters={"quantile": 0.5}, iterate={"rounds": 2, "local_size": 9, "rank": 2}, evaluate={"limit": 8})
    report = run_recipe(parse_recipe(data))
    assert report["stage2"]["accepted"] == 2 and len(report["stage2"]["rounds"]) == 2
    assert set(report["chosen"]) == {"A", "B", "C"} and "stage2" in report["timings_s"]
    for record in report["candidates"] + [c for r in report["stage2"]["rounds"] for c in r["candidates"]]:
        assert record["ess"] >= 1 and record["step_rms"] > 0 and record["ess_without_compatibility"] >= 1
    assert len(report["stage2"]["rounds"][0]["candidates"]) == len(report["candidates"])  # the whole grid again
    assert report["stage2"]["sigma_schedule"] == "fixed" and report["stage2"]["rounds"][0]["sigma"] == report["stage2"]["rounds"][1]["sigma"]
    rows = report["evaluation"]["rows"]
    assert "stage1" in rows and set(rows["merged"]["vs_stage1"]) == {"diff", "ci_low", "ci_high"}  # what stage 2 added, paired
    assert report["gate"]["ess"] >= 1
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


# --- stage 2 as the paper defines it: the stage-1 procedure on each round's local population -------------

from dataclasses import replace as _replace  # noqa: E402

from corpmerge.amplitudes import Amplitudes  # noqa: E402
from corpmerge.gate.stage2 import local_sigma  # noqa: E402
from corpmerge.methods import MergeResult, get_method  # noqa: E402
from corpmerge.model_io import BaseRef  # noqa: E402
from corpmerge.plan import Checked  # noqa: E402
from corpmerge.scoring.lmeval import ExampleScore  # noqa: E402

STAGE1 = {"quantile": 0.7, "beta": 20.0, "alpha": 1.0}


class _Suite:
    tasks = ["t"]

    def doc_count(self, name):
        return 400

    def cluster_labels(self):
        return {}  # no task declares metadata.cluster_by

    def clusters(self, keys):
        return None


class PlantedWorld:
    """A task whose examples respond to one direction t of amplitude space (no model, no lm-eval).

    With p(u) = ⟨u − c₁, t⟩ (c₁ the stage-1 centre, s₁ the sd of a local proposal's p): a base-wrong
    example j is answered right iff p ≥ θⱼ, θⱼ ~ U[3, 6]·s₁ — beyond any single local perturbation, so a step
    of α = 1 (a weighted mean of local elites) fixes nothing, and α = 4 fixes most. The reward value adds a
    graded 0.01·tanh(p/s₁) (partial credit), so fold-A rewards rank local perturbations by p.
    """

    def __init__(self, centre: Amplitudes, target: dict[int, float], scale: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centre = {int(s): float(v) for s, v in zip(centre.seeds, centre.values)}
        self.target, self.scale = target, scale
        self.base_right = rng.random(400) < 0.5
        self.threshold = rng.uniform(3, 6, 400) * scale
        self.log: list[tuple[str, str, list[str]]] = []
        self.answers: list[list[dict]] = []

    def projection(self, update) -> float:
        amps = update.final_amplitudes() if isinstance(update, MergeResult) else update
        values = {int(s): float(v) for s, v in zip(amps.seeds, amps.values)} if amps is not None else {}
        return sum((values.get(s, 0.0) - self.centre.get(s, 0.0)) * t for s, t in self.target.items())

    def evaluate(self, requests, label):
        self.log.append(("evaluate", requests[0].fold, [r.subject for r in requests]))
        out = []
        for req in requests:
            p = 0.0 if req.update is None else self.projection(req.update)
            scores = {}
            for task, doc in req.keys():
                right = bool(self.base_right[doc] or p >= self.threshold[doc])
                scores[(task, doc)] = ExampleScore(float(right) + 0.01 * float(np.tanh(p / self.scale)), right)
            out.append(scores)
        self.answers.append(out)
        return out

    def scores(self, request, what=None):
        return self.evaluate([request], "one")[0]


class FakeSession:
    def __init__(self, recipe, world):
        self.recipe, self.suite, self.world = recipe, _Suite(), world
        self.folds = {}

    def evaluate(self, requests, label):
        return self.world.evaluate(requests, label)

    def scores(self, request, what=None):
        return self.world.scores(request)


def planted(iterate_spec: dict, parameters: dict, z: float = 1.645):
    """A stage-1 decision at STAGE1 on a 20-entry cloud, and a fake session over the planted world."""
    recipe = parse_recipe(
        {
            "base_model": "unused",
            "population": [{"seed": 100 + i, "sigma": 0.01} for i in range(20)],
            "scoring": {"tasks": ["t"], "support": {"limit": 400, "split_seed": 0}},
            "merge_method": "corp",
            "parameters": parameters,
            "gate": {"z": z, "regression_penalty": 2.0},
            "iterate": iterate_spec,
        }
    )
    method = get_method("corp")
    rewards = np.random.default_rng(1).uniform(0.3, 0.5, 20)
    entries = [Entry(100 + i, 0.01, float(r)) for i, r in enumerate(rewards)]
    cloud = Cloud.from_entries(entries)
    result = method(cloud, method.point(STAGE1))
    cand = Candidate(dict(STAGE1), result, "stage1")
    stage1 = GateDecision(cand, 1.0, [cand], "accepted")
    spec = recipe.iterate
    directions = principal_directions(cloud, result.elites, result.weights, spec.rank)
    share = directions.eigenvalues[0] / directions.eigenvalues.sum()
    scale = 0.01 * np.sqrt((1 - spec.isotropic_floor) * share)  # sd of a proposal's component along u₁
    target = {int(s): float(v) for s, v in zip(directions.seeds, directions.vectors[0]) if v != 0}
    world = PlantedWorld(stage1.result.final_amplitudes(), target, scale)
    checked = Checked(recipe, method, method.grid(recipe.parameters), entries, BaseRef("unused"))
    return FakeSession(recipe, world), checked, cloud, stage1


GRID = {"quantile": [0.7], "beta": [0.5, 1, 2, 20], "alpha": [1, 2, 4]}


def test_stage2_searches_the_grid_again_and_finds_a_step_stage1s_point_cannot():
    session, checked, cloud, stage1 = planted({"rounds": 3, "local_size": 40, "rank": 4}, GRID)
    final, rounds = iterate(session, checked, cloud, stage1)
    first = rounds[0]
    assert first.accepted and len(first.candidates) == 12  # every grid point is a candidate
    assert first.params["alpha"] == 4.0 and first.params != STAGE1
    # the old procedure built only stage 1's point on the local population: here it fixes nothing on fold B1
    old = next(c for c in first.candidates if c.params["beta"] == 20.0 and c.params["alpha"] == 1.0)
    assert old.validated.fixes == 0 and not (old.validated.constructive_score > 0)
    # round 2 starts from the new centre, which already fixes every fixable example: rejected, and the iteration stops
    assert [r.accepted for r in rounds] == [True, False]
    assert session.world.projection(final) > 6 * session.world.scale
    assert final.offset is not None and final.params["alpha"] == 4.0


def test_stage2_candidates_are_built_from_the_rounds_fold_a_only_and_fold_c_comes_after_ranking():
    session, checked, cloud, stage1 = planted({"rounds": 3, "local_size": 40, "rank": 4}, GRID)
    world, calls = session.world, []
    method = checked.method

    def spy(local, params):
        calls.append((len(world.log), local.rewards.copy()))
        return method.fn(local, params)

    checked = _replace(checked, method=_replace(method, fn=spy))
    _, rounds = iterate(session, checked, cloud, stage1)
    folds = [fold for _, fold, _ in world.log]
    assert set(folds) <= {f"{x}{r}" for x in "ABC" for r in range(1, len(rounds) + 1)}  # only the rounds' fresh folds
    for r in range(1, len(rounds) + 1):
        a, first_b = folds.index(f"A{r}"), folds.index(f"B{r}")
        built = [rewards for at, rewards in calls if a < at <= first_b]
        assert len(built) == 12 and all(at == a + 1 for at, _ in calls if a < at <= first_b)  # all built before fold B is read
        # the local cloud's rewards are the proposals' mean reward values on this round's fold A, nothing else
        expected = [np.mean([s.value for s in scores.values()]) for scores in world.answers[a]]
        assert all(np.array_equal(rewards, expected) for rewards in built)
        if f"C{r}" in folds:  # fold C only after every fold-B evaluation of the round, and for one candidate only
            c_at = folds.index(f"C{r}")
            assert f"B{r}" not in folds[c_at:] and f"C{r}" not in folds[:first_b]
            assert len(world.log[c_at][2]) == 1 + len(checked.recipe.gate.probe_multipliers)  # the centre + m·step of one candidate


def test_a_round_whose_top_candidate_fails_the_probe_is_rejected_and_stops_the_iteration(monkeypatch):
    import corpmerge.gate.procedure as gating

    session, checked, cloud, stage1 = planted({"rounds": 3, "local_size": 40, "rank": 4}, GRID)
    monkeypatch.setattr(gating, "pick_multiplier", lambda lcbs: None)  # fold C never confirms a step
    final, rounds = iterate(session, checked, cloud, stage1)
    assert len(rounds) == 1 and not rounds[0].accepted and rounds[0].candidates_probed == 1
    assert "no probe multiplier" in rounds[0].reason  # the top one passed fold B1; the round abstains, the iteration stops
    before, after = stage1.result.final_amplitudes(), final.final_amplitudes()
    assert np.array_equal(before.seeds, after.seeds) and np.array_equal(before.values, after.values)  # the centre did not move


def test_sigma_is_fixed_by_default_and_the_reference_schedule_halves_it_after_each_rejection():
    session, checked, cloud, stage1 = planted({"rounds": 2, "local_size": 12, "rank": 4, "patience": 2}, GRID, z=100.0)
    _, rounds = iterate(session, checked, cloud, stage1)
    assert [r.sigma for r in rounds] == [0.01] * 3 and not any(r.accepted for r in rounds)
    session, checked, cloud, stage1 = planted({"rounds": 2, "local_size": 12, "rank": 4, "patience": 2, "sigma_schedule": "halve"}, GRID, z=100.0)
    _, rounds = iterate(session, checked, cloud, stage1)
    assert [r.sigma for r in rounds] == [0.01, 0.005, 0.0025]
    spec = parse_recipe({"base_model": "x", "population": [{"seed": 1, "sigma": 1}], "iterate": {"sigma_schedule": "halve"}}).iterate
    sigmas, rewards = np.array([1e-3, 1e-3, 3e-3, 3e-3, 5e-3]), np.array([0.2, 0.4, 0.5, 0.45, 0.1])
    assert local_sigma(spec, sigmas, rewards) == 3e-3  # the σ level with the best mean reward (0.475)
    assert local_sigma(spec.model_copy(update={"sigma_schedule": "fixed"}), sigmas, rewards) == 3e-3  # the median
    assert local_sigma(spec.model_copy(update={"sigma": 2e-3}), sigmas, rewards) == 2e-3


def test_ess_and_step_rms_in_the_candidate_record_match_a_hand_computation():
    from corpmerge.gate.procedure import candidate_record

    # three elites of equal σ = 0.01, β = 1, rewards 0, ln 2, ln 3: w¹ = softmax(β·r) = (1, 2, 3)/6,
    # so the ESS without compatibility terms is 1/Σ(w¹)² = 36/14. Single-seed entries: aᵢ = w¹ᵢ/‖w¹‖ = (1, 2, 3)/√14,
    # z(a) = (−√1.5, 0, √1.5); dᵢ = σ²(1 − aᵢ²) ∝ (13, 10, 5), z(d) = (11, 2, −13)/(3·√(98/9)) = (1.1112, 0.2020, −1.3132).
    # Logits β·r + z(a) − z(d) = (−2.3359, 0.4911, 3.6366) → w² = (0.002437, 0.041171, 0.956392): ESS 1.09124,
    # and the step α·Σ w²ᵢσᵢε(sᵢ) has RMS α·σ·‖w²‖ = 2 · 0.01 · 0.957281.
    cloud = Cloud.from_entries([Entry(s, 0.01, r) for s, r in zip((7, 8, 9), (0.0, np.log(2), np.log(3)))])
    method = get_method("corp")
    result = method(cloud, method.point({"quantile": 0.0, "beta": 1.0, "alpha": 2.0}))
    assert np.allclose(result.weights, [0.0024368, 0.0411708, 0.9563924], atol=1e-6)
    record = candidate_record(Candidate({}, result.scaled(0.5), "x"))
    assert record.ess == pytest.approx(1.0912416, abs=1e-6)
    assert record.ess_without_compatibility == pytest.approx(36 / 14)
    assert record.elites == 3 and record.step_rms == pytest.approx(0.5 * 2 * 0.01 * 0.9572812, rel=1e-6)  # probe m = 0.5 included
    reward_only = get_method("reward_avg")(cloud, get_method("reward_avg").point({"quantile": 0.0, "beta": 1.0}))
    assert reward_only.ess == pytest.approx(36 / 14)  # = CoRP with γ = λ = 0
