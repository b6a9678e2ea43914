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


def test_diagnose_command_writes_a_png(tmp_path, tiny_model):
    population = [{"seed": 10 + i, "sigma": 0.01 * (1 + i % 2), "reward": 0.3 + 0.01 * i} for i in range(12)]
    data = given_rewards_recipe(tiny_model, tmp_path / "out", population=population)
    result = run_cli("diagnose", str(write_recipe(tmp_path, data)), "--top", "8", "--splits", "5")
    assert result.returncode == 0, result.stderr
    assert "mean-consensus" in result.stdout and "subspace-excess" in result.stdout
    png = tmp_path / "out.work" / "diagnose.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
