"""Mirrored populations: (s, +σ) and (s, −σ) share ε(s), race together, keep their own store keys; old keys are unchanged."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from safetensors.torch import load_file

from corpmerge.amplitudes import Amplitudes
from corpmerge.errors import CorpmergeError
from corpmerge.population import Entry, mirror_groups, sample_population
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.racing import race_cut, standing, together
from corpmerge.scoring.subjects import entry_subject

SAMPLED = {"size": 6, "sigmas": [0.02, 0.05], "seed": 3}


def test_a_mirrored_pair_is_the_same_noise_bit_for_bit_with_opposite_signs():
    entries = sample_population(6, [0.02, 0.05], 3, antithetic=True)
    assert [(e.seed, e.sigma) for e in entries[1::2]] == [(e.seed, -e.sigma) for e in entries[::2]]
    assert entries[::2] == sample_population(3, [0.02, 0.05], 3)  # the + members: the plain spec of half the size
    for plus, minus in zip(entries[::2], entries[1::2]):
        for name, shape in (("model.layers.0.mlp.up_proj.weight", torch.Size([64, 32])), ("model.norm.weight", torch.Size([70_000]))):
            up = Amplitudes(np.array([plus.seed]), np.array([plus.sigma])).delta(name, shape)
            down = Amplitudes(np.array([minus.seed]), np.array([minus.sigma])).delta(name, shape)
            assert torch.equal(down, -up) and torch.equal(up.view(torch.int32) ^ down.view(torch.int32), torch.full_like(up, 0, dtype=torch.int32) - 2**31)


def test_old_populations_and_store_keys_are_unchanged_and_a_mirror_gets_its_own_key():
    # the conftest fixture's sampled population, as every store written before mirrored populations keyed it
    old = ["entry:1742692731:0.05", "entry:183930185:0.05", "entry:385346042:0.02", "entry:508546690:0.02", "entry:389477914:0.02", "entry:1720723810:0.02"]
    assert [entry_subject(e) for e in parse_recipe(scoring_recipe("base", "tasks", "out")).entries()] == old
    given = parse_recipe(given_rewards_recipe("base", "out")).entries()
    assert [entry_subject(e) for e in given] == ["entry:101:0.01", "entry:102:0.02", "entry:103:0.01", "entry:104:0.03", "entry:105:0.02"]
    mirrored = parse_recipe(scoring_recipe("base", "tasks", "out", population={**SAMPLED, "antithetic": True})).entries()
    keys = [entry_subject(e) for e in mirrored]
    assert keys[::2] == ["entry:1742692731:0.02", "entry:183930185:0.02", "entry:385346042:0.05"]  # = the plain spec of size 3
    assert keys[1::2] == ["entry:1742692731:-0.02", "entry:183930185:-0.02", "entry:385346042:-0.05"]
    assert len(set(keys)) == 6 and mirror_groups(mirrored) == [0, 0, 2, 2, 4, 4] and mirror_groups(given) == [0, 1, 2, 3, 4]


def population(*rows):
    return [{"seed": s, "sigma": sigma, **({"reward": r} if r is not None else {})} for s, sigma, r in rows]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (((1, 0.01, 0.4), (1, 0.02, 0.5)), "population[1].seed: seed 1 appears twice (also population[0]); seeds must be unique, except a mirrored pair"),
        (((1, 0.01, 0.4), (1, -0.02, 0.5)), "population[1].seed: seed 1 appears twice"),
        (((1, 0.01, 0.4), (1, -0.01, 0.5), (1, 0.01, 0.3)), "population[2].seed: seed 1 appears twice"),
        (
            ((1, 0.01, 0.4), (2, -0.01, 0.5)),
            "population[1].sigma: Input should be greater than 0; a negative σ is only the mirror of a listed {seed: 2, sigma: 0.01}",
        ),
        (
            ((1, 0.01, 0.4), (1, -0.01, None)),
            "population[1].reward: a mirrored pair (here with population[0]) is scored together; give both rewards or neither",
        ),
        (((1, 0.0, 0.4),), "population[0].sigma: Input should be greater than 0"),
    ],
)
def test_listed_mirrors_follow_one_rule(rows, message):
    with pytest.raises(CorpmergeError) as err:
        parse_recipe(given_rewards_recipe("base", "out", population=population(*rows)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_listed_mirrors_are_accepted_in_any_order():
    entries = parse_recipe(given_rewards_recipe("base", "out", population=population((5, -0.01, 0.3), (6, 0.02, 0.6), (5, 0.01, 0.5)))).entries()
    assert [(e.seed, e.sigma) for e in entries] == [(5, -0.01), (6, 0.02), (5, 0.01)] and mirror_groups(entries) == [0, 1, 0]


def test_an_odd_antithetic_population_is_one_line_exit_2(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out", population={**SAMPLED, "size": 7, "antithetic": True}))
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "population.antithetic: an antithetic population is size/2 mirrored pairs, so population.size must be even (got 7)" in " ".join(
        result.stderr.split()
    )


def test_racing_keeps_or_stops_a_pair_together():
    # four pairs on the first 10 of 40 examples, paired against a base that gets every other example right
    base = np.tile([1.0, 0.0], 20)
    good, bad = base[:10].copy(), np.zeros(10)
    good[1::2] = 1.0  # fixes all 5 seen errors
    values = np.array([good, bad, bad, bad, good, good, bad, bad])  # pair 0 split, pair 1 bad, pair 2 good, pair 3 bad
    groups = [0, 0, 2, 2, 4, 4, 6, 6]
    cut = race_cut(values, 40, 1.645, 2, [standing(v, base, 1.645) for v in values])
    assert cut.tolist() == [False, True, True, True, False, False, True, True]  # alone, the bad member of pair 0 would stop
    assert together(cut, groups).tolist() == [False, False, True, True, False, False, True, True]
    assert together(cut, list(range(8))).tolist() == cut.tolist()  # no mirrors: the race is what it was


def test_run_es_on_a_mirrored_population_end_to_end(tmp_path, tiny_model, tiny_task):
    """`corpmerge run` with `merge_method: es` and `antithetic: true` on the tiny model: both members of every pair are
    scored on the same fold-A examples under their own keys, and the shipped lineage is the hand-computed ES update."""
    out = tmp_path / "out"
    data = scoring_recipe(
        tiny_model, tiny_task, out, population={**SAMPLED, "antithetic": True}, merge_method="es", parameters={"shaping": ["zscore", "rank"], "alpha": [1, 4]}
    )
    result = run_cli("run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    work = tmp_path / "out.work"
    report = json.loads(((out if (out / "report.json").is_file() else work) / "report.json").read_text())
    entries = sample_population(6, [0.02, 0.05], 3, antithetic=True)
    assert report["method"] == "es" and report["racing"]["keep"] == 6  # es uses every entry, so racing stops none
    examples = report["racing"]["examples"]
    assert examples[::2] == examples[1::2]  # a pair is scored on the same examples
    with sqlite3.connect(work / "scores.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT subject FROM units WHERE fold='A'")}
    assert {entry_subject(e) for e in entries} <= stored
    rewards = np.array(report["population"]["rewards"])
    sigmas = np.array([e.sigma for e in entries])

    def hand(shaping: str, alpha: float) -> np.ndarray:
        """aₛ = α·σ·(f(r₊) − f(r₋))/n per pair."""
        if shaping == "zscore":
            f = (rewards - rewards.mean()) / rewards.std()
        else:  # rank from 0: how many are smaller, ties sharing their mean rank
            f = np.array([(rewards < r).sum() + ((rewards == r).sum() - 1) / 2 for r in rewards]) / 5 - 0.5
        return alpha * (f * sigmas)[::2] / 6 + alpha * (f * sigmas)[1::2] / 6

    for cand in report["candidates"]:
        a = hand(cand["params"]["shaping"], cand["params"]["alpha"])
        assert cand["ess"] == pytest.approx(np.abs(a).sum() ** 2 / (a**2).sum(), rel=1e-9)
        assert cand["step_rms"] == pytest.approx(np.linalg.norm(a), rel=1e-9)
    assert report["gate"]["accepted"] == (out / "corpmerge.yaml").is_file()  # the tiny model's gate abstains here
    # the gate off, one grid point: the written model is θ₀ + Σ aₛ·ε(s), its lineage one (seed, amplitude) row per pair
    shipped = tmp_path / "shipped"
    data.update(parameters={"shaping": "rank", "alpha": 2}, gate={"enabled": False}, output={"path": str(shipped)})
    assert run_cli("run", str(write_recipe(tmp_path, data, "shipped.yaml"))).returncode == 0
    lineage = yaml.safe_load((shipped / "corpmerge.yaml").read_text())
    expected = {e.seed: a for e, a in zip(entries[::2], hand("rank", 2.0)) if a != 0}
    assert {row["seed"]: row["amplitude"] for row in lineage["lineage"]} == pytest.approx(expected, rel=1e-12)
    assert [(row["seed"], row["sigma"]) for row in lineage["recipe"]["population"]] == [(e.seed, e.sigma) for e in entries]
    assert parse_recipe(lineage["recipe"]).entries() == [Entry(e.seed, e.sigma, r) for e, r in zip(entries, rewards.tolist())]  # it reads back
    base, written = load_file(tiny_model / "model.safetensors"), load_file(shipped / "model.safetensors")
    amps = Amplitudes(np.array(list(expected), dtype=np.int64), np.array(list(expected.values())))
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(written[name], base[name] + amps.delta(name, base[name].shape), rtol=0, atol=1e-7)
    listed = run_cli("methods")
    assert listed.returncode == 0 and "es" in listed.stdout.split() and "shaping=zscore" in listed.stdout


def test_a_mirrored_pair_is_one_anti_parallel_direction_for_every_method():
    """In the cloud a pair (s, σ), (s, −σ) is ±σ·e(s): the elite average lists s once with w₊σ − w₋σ, and CoRP's
    alignment sees the pair as anti-parallel (its geometry, not two orthogonal directions)."""
    from corpmerge.amplitudes import Cloud
    from corpmerge.methods import get_method

    entries = [Entry(7, 0.02, 0.9), Entry(7, -0.02, 0.6), Entry(8, 0.03, 0.7), Entry(9, 0.01, 0.8)]
    cloud = Cloud.from_entries(entries)
    assert cloud.seeds.tolist() == [7, 8, 9] and cloud.sigmas is None
    rows = np.arange(4)
    assert np.allclose(cloud.dot(rows, cloud.vectors[1]), [-0.02 * 0.02, 0.02 * 0.02, 0, 0])  # anti-parallel to its mirror
    for name, params in (("reward_avg", {"quantile": 0.0, "beta": 5}), ("corp", {"quantile": 0.0, "beta": 5, "alpha": 1})):
        method = get_method(name)
        result = method(cloud, method.point(params))
        table = result.final_amplitudes().table()
        assert sorted(r["seed"] for r in table) == [7, 8, 9]  # each seed once
    w = np.exp(5 * np.array([0.9, 0.6, 0.7, 0.8]))
    w /= w.sum()
    avg = get_method("reward_avg")(cloud, get_method("reward_avg").point({"quantile": 0.0, "beta": 5})).final_amplitudes()
    assert avg.values[0] == pytest.approx(w[0] * 0.02 - w[1] * 0.02, rel=1e-12)


def test_corp_on_elites_that_cancel_is_a_zero_update_not_nan():
    """The two halves of a mirrored pair as the only elites, at equal reward: the proposal m is 0, which has no
    direction; CoRP's alignment is then 0 for every elite (no NaN), and the update Σ w²ᵢvᵢ cancels to θ₀."""
    from corpmerge.amplitudes import Cloud
    from corpmerge.methods import get_method

    cloud = Cloud.from_entries([Entry(7, 0.02, 0.9), Entry(7, -0.02, 0.9), Entry(8, 0.03, 0.1), Entry(9, 0.01, 0.2)])
    corp = get_method("corp")
    result = corp(cloud, corp.point({"quantile": 0.7, "beta": 5, "alpha": 2}))
    values = result.final_amplitudes().values
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(result.weights))
    assert result.final_amplitudes().nonzero().seeds.size == 0
