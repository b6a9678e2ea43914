"""`es`: the whole population's shaped-reward estimator, checked against hand computations in amplitude space."""

from __future__ import annotations

import numpy as np
import pytest

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.methods import get_method
from corpmerge.scoring.racing import entries_to_keep

ES = get_method("es")


def es(cloud: Cloud, **params):
    return ES(cloud, ES.point(params))


def merged(amps: Amplitudes) -> dict[int, float]:
    """One amplitude per seed (duplicated seeds summed), zeros dropped."""
    out: dict[int, float] = {}
    for s, a in zip(amps.seeds.tolist(), amps.values.tolist()):
        out[s] = out.get(s, 0.0) + a
    return {s: a for s, a in out.items() if a != 0}


def test_zscore_amplitudes_match_a_hand_computation():
    seeds, sigmas, rewards = np.array([11, 12, 13, 14]), np.array([0.01, 0.02, 0.01, 0.03]), np.array([0.2, 0.5, 0.6, 0.3])
    result = es(Cloud.single_seed(seeds, sigmas, rewards), alpha=2.0)
    mean, sd = 0.4, np.sqrt((0.04 + 0.01 + 0.04 + 0.01) / 4)  # population sd of the rewards
    expected = {s: 2.0 * (r - mean) / sd * sigma / 4 for s, sigma, r in zip(seeds.tolist(), sigmas, rewards)}
    got = merged(result.amplitudes)
    assert got.keys() == expected.keys() and all(got[s] == pytest.approx(expected[s], rel=1e-12) for s in expected)
    a = np.array(list(expected.values()))
    assert result.ess == pytest.approx(np.abs(a).sum() ** 2 / (a**2).sum(), rel=1e-12)
    assert result.elites.tolist() == [0, 1, 2, 3] and np.allclose(result.weights, np.abs(a))


def test_rank_shaping_is_centred_ranks_with_ties_sharing_their_mean_rank():
    seeds, rewards = np.array([1, 2, 3, 4, 5]), np.array([0.5, 0.1, 0.3, 0.3, 0.9])
    result = es(Cloud.single_seed(seeds, np.full(5, 0.01), rewards), shaping="rank")
    ranks = np.array([3, 0, 1.5, 1.5, 4])  # 0.1 < 0.3 = 0.3 < 0.5 < 0.9; the tie shares (1 + 2)/2
    f = ranks / 4 - 0.5  # in [−0.5, 0.5]
    assert f.tolist() == [0.25, -0.5, -0.125, -0.125, 0.5]
    expected = dict(zip(seeds.tolist(), (f * 0.01 / 5).tolist()))
    got = merged(result.amplitudes)
    assert got.keys() == expected.keys() and all(got[s] == pytest.approx(expected[s], rel=1e-12) for s in expected)


@pytest.mark.parametrize("shaping", ["zscore", "rank"])
def test_a_mirrored_pair_adds_up_on_its_seed_to_the_antithetic_form(shaping):
    """Rows (s, +σ), (s, −σ): aₛ = α·σ·(f(r₊) − f(r₋))/n, one amplitude per seed, a pair is one carrier."""
    seeds = np.array([7, 7, 9, 9, 4, 4])
    sigmas = np.array([0.01, -0.01, 0.02, -0.02, 0.03, -0.03])
    rewards = np.array([0.6, 0.4, 0.5, 0.55, 0.3, 0.3])
    result = es(Cloud.single_seed(seeds, sigmas, rewards), shaping=shaping, alpha=4.0)
    if shaping == "zscore":
        f = (rewards - rewards.mean()) / rewards.std()
    else:  # 0.3 = 0.3 < 0.4 < 0.5 < 0.55 < 0.6
        f = np.array([5, 2, 3, 4, 0.5, 0.5]) / 5 - 0.5
    expected = {7: 4.0 * 0.01 * (f[0] - f[1]) / 6, 9: 4.0 * 0.02 * (f[2] - f[3]) / 6}  # seed 4 scored r₊ = r₋: no step
    assert result.amplitudes.seeds.tolist() == [4, 7, 9]  # one amplitude per seed: the lineage stays a (seed, amplitude) table
    got = merged(result.amplitudes)
    assert got.keys() == expected.keys() and all(got[s] == pytest.approx(expected[s], rel=1e-12) for s in expected)
    assert result.elites.tolist() == [0, 2]  # each carrying pair at its first member
    if shaping == "zscore":  # the mean cancels: f(r₊) − f(r₋) = (r₊ − r₋)/sd(r)
        assert got[7] == pytest.approx(4.0 * 0.01 * (0.6 - 0.4) / rewards.std() / 6, rel=1e-12)


def test_planted_population_the_mirrored_difference_finds_the_direction_and_the_elite_average_does_not():
    """Rewards r(s, ±σ) = b + dₛ ± c·σ·gₛ: a good direction g over seeds and a per-seed offset dₛ (how easy the examples
    that seed happened to flip are, or any even-order term) ten times larger than the signal, shared by both members of
    a pair. The pair difference r₊ − r₋ = 2cσgₛ cancels dₛ; the elites are picked mostly by dₛ. Same budget, 400
    evaluations: 200 mirrored pairs, or 400 plain entries r = b + dₛ + cσgₛ."""
    rng = np.random.default_rng(0)
    pairs, sigma, c = 200, 0.01, 1.0
    g = rng.standard_normal(2 * pairs)
    d = 10 * c * sigma * rng.standard_normal(2 * pairs)
    signs = np.tile([1.0, -1.0], pairs)
    seeds = np.repeat(np.arange(pairs), 2)
    mirrored = Cloud.single_seed(seeds, signs * sigma, 0.5 + d[seeds] + c * signs * sigma * g[seeds])
    plain = Cloud.single_seed(np.arange(2 * pairs), np.full(2 * pairs, sigma), 0.5 + d + c * sigma * g)

    def cosine(amps: Amplitudes) -> float:
        """cos(Δ, Σₛ gₛ·ε(s)) over the seeds the population uses."""
        a = merged(amps)
        v = np.array([a.get(s, 0.0) for s in range(int(amps.seeds.max()) + 1)])
        return float(v @ g[: v.size] / (np.linalg.norm(v) * np.linalg.norm(g[: v.size])))

    assert cosine(es(mirrored).amplitudes) == pytest.approx(1.0, abs=1e-12)  # z-score: aₛ ∝ r₊ − r₋ = 2cσgₛ exactly
    assert cosine(es(mirrored, shaping="rank").amplitudes) > 0.6  # ranks keep the order of r₊ − r₋ within the scale of dₛ
    reward_avg = get_method("reward_avg")
    point = reward_avg.point({"quantile": 0.7, "beta": 10.0})
    assert abs(cosine(reward_avg(plain, point).amplitudes)) < 0.2  # elites chosen by dₛ: the elite average points nowhere
    # on the mirrored population it sees g only through the pairs the elite threshold splits (r₊ ≥ t > r₋ needs gₛ > 0)
    assert abs(cosine(reward_avg(mirrored, point).amplitudes)) < 0.6


def test_a_stage2_cloud_of_dense_rows():
    """Dense rows vᵢ (σ inside): Δ = α/n·Σ f(rᵢ)·vᵢ, row weights |α·f(rᵢ)/n|·‖vᵢ‖."""
    vectors = np.array([[0.01, 0.0, 0.002], [0.0, 0.02, -0.001], [0.005, 0.005, 0.0]])
    rewards = np.array([0.25, 0.75, 0.5])  # the last one is the mean: f = 0, no weight
    result = es(Cloud(np.array([5, 6, 7]), vectors, rewards), alpha=2.0)
    f = (rewards - rewards.mean()) / rewards.std()
    assert np.allclose(result.amplitudes.values, 2.0 * f @ vectors / 3, rtol=1e-12, atol=0)
    assert result.elites.tolist() == [0, 1] and np.allclose(result.weights, np.abs(2.0 * f[:2] / 3) * np.linalg.norm(vectors[:2], axis=1))


def test_every_entry_is_kept_by_racing_and_a_cancelled_step_is_one_line():
    assert ES.elite_quantile({}) == 0.0 and entries_to_keep(60, 0.0, 1) == 60  # es uses every entry: racing stops none
    with pytest.raises(CorpmergeError, match=r"^population: es has no step here: every shaped reward cancels") as err:
        es(Cloud.single_seed(np.array([3, 3, 8, 8]), np.array([0.01, -0.01, 0.02, -0.02]), np.array([0.4, 0.4, 0.7, 0.7])))
    assert "\n" not in str(err.value)
    with pytest.raises(CorpmergeError, match=r"parameters\.shaping: Input should be 'zscore' or 'rank' \(got ranks\)"):
        ES.grid({"shaping": ["zscore", "ranks"]})


@pytest.mark.parametrize("shaping", ["zscore", "rank"])
def test_a_single_seed_cloud_gives_the_dense_clouds_update(shaping):
    """Without mirrors, σ-only storage and the dense diag(σ) cloud give the same Δ bit for bit (each column has one term)."""
    rng = np.random.default_rng(4)
    seeds, sigmas, rewards = rng.choice(10**6, 40, replace=False), rng.uniform(1e-3, 3e-3, 40), rng.integers(0, 6, 40) / 5
    small = es(Cloud.single_seed(seeds, sigmas, rewards), shaping=shaping, alpha=3.0)
    dense = es(Cloud(seeds, np.diag(sigmas), rewards), shaping=shaping, alpha=3.0)
    assert merged(small.amplitudes) == merged(dense.amplitudes)
    assert np.array_equal(small.elites, dense.elites) and np.allclose(small.weights, dense.weights, rtol=1e-15, atol=0)
