import numpy as np
from conftest import given_rewards_recipe, run_cli, write_recipe

from corpmerge.report.diagnose import split_half


def test_planted_structure_is_stable_and_noise_is_not():
    rng = np.random.default_rng(0)
    m, n = 256, 64
    shared = rng.standard_normal(m)
    planted = np.outer(rng.uniform(0.5, 1.5, n), shared) + rng.standard_normal((n, m))
    noise = rng.standard_normal((n, m))
    found = split_half(planted, k=4, splits=20, seed=1)
    assert found["mean_consensus"].stable and found["subspace_excess"].stable
    assert found["mean_consensus"].mean > 0.5
    absent = split_half(noise, k=4, splits=20, seed=1)
    assert not absent["mean_consensus"].stable and not absent["subspace_excess"].stable
    assert abs(absent["subspace_excess"].mean) < 0.05


def test_rewards_weight_the_mean_consensus():
    # a quarter of the elites, the well-rewarded ones, share +u; the rest carry −u so that the
    # plain mean has no shared direction: only the reward-weighted means (Eq. 7) agree
    rng = np.random.default_rng(0)
    m, n, top = 128, 32, 8
    u = rng.standard_normal(m)
    x = rng.standard_normal((n, m))
    x[:top] += u
    x[top:] -= top / (n - top) * u
    rewards = np.full(n, 0.2)
    rewards[:top] = 0.8
    weighted = split_half(x, k=2, seed=1, rewards=rewards)["mean_consensus"]
    assert weighted.stable and weighted.mean > 0.5
    assert not split_half(x, k=2, seed=1)["mean_consensus"].stable
    assert not split_half(x, k=2, seed=1, rewards=rewards[rng.permutation(n)])["mean_consensus"].stable
    equal = split_half(x, k=2, seed=1, rewards=np.full(n, 0.5))["mean_consensus"]
    unweighted = split_half(x, k=2, seed=1)["mean_consensus"]
    assert np.allclose(equal.values, unweighted.values) and abs(equal.lower - unweighted.lower) < 1e-12


def test_rewards_weight_the_subspaces():
    # the well-rewarded elites share a plane, hidden among louder isotropic low-reward elites
    rng = np.random.default_rng(0)
    m, n, top = 128, 32, 12
    plane = np.linalg.qr(rng.standard_normal((m, 2)))[0].T
    x = 3.0 * rng.standard_normal((n, m))
    x[:top] = rng.standard_normal((top, m)) + 10.0 * rng.standard_normal((top, 2)) @ plane
    rewards = np.full(n, 0.2)
    rewards[:top] = 0.8
    weighted = split_half(x, k=2, seed=1, rewards=rewards)["subspace_excess"]
    assert weighted.stable and weighted.mean > 0.2
    assert not split_half(x, k=2, seed=1)["subspace_excess"].stable
    assert not split_half(x, k=2, seed=1, rewards=rewards[rng.permutation(n)])["subspace_excess"].stable


def test_the_bound_is_of_the_mean_over_splits():
    # four elites, two along u and two along v (cos(u, v) < 0): the pairing {u,u}|{v,v} disagrees
    # (cos −0.45), the two mixed pairings agree (cos ≈ 1). The mean over 20 splits is ≈ 0.5, and the
    # rotation null's draws are means over the same 20 splits; a single split is −0.45 a third of the time
    u = np.zeros(8)
    u[0] = 1.0
    v = -0.5 * u
    v[1] = 1.0
    consensus = split_half(np.stack([u, 1.1 * u, v, 1.2 * v]), splits=20, seed=0)["mean_consensus"]
    assert np.isclose(consensus.values.min(), -1 / np.sqrt(5))
    assert consensus.stable and consensus.lower > 0.1


def test_diagnose_command_writes_a_png(tmp_path, tiny_model):
    population = [{"seed": 10 + i, "sigma": 0.01 * (1 + i % 2), "reward": 0.3 + 0.01 * i} for i in range(12)]
    data = given_rewards_recipe(tiny_model, tmp_path / "out", population=population)
    result = run_cli("diagnose", str(write_recipe(tmp_path, data)), "--top", "8", "--splits", "5")
    assert result.returncode == 0, result.stderr
    assert "mean-consensus" in result.stdout and "subspace-excess" in result.stdout
    png = tmp_path / "out.work" / "diagnose.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
