"""Issue 36, item 2: the split-half diagnostic does not call pure noise stable, at any number of elites."""

import numpy as np
import yaml
from conftest import given_rewards_recipe, run_cli, write_recipe

from corpmerge.report.diagnose import split_half

ELITES = (8, 12, 16, 24, 32, 40, 48, 64)
SEEDS = 40
LEVEL = 0.05


def test_pure_noise_is_called_stable_at_the_stated_rate_at_every_elite_count():
    # i.i.d. Gaussian rows (the sketch of rewards unrelated to the noise), rewards weighting them as Eq. 7 does.
    # The bound is a randomization test at 5%: over 8 × 40 = 320 trials the false-"stable" count is Binomial(320, 0.05),
    # mean 16, sd 3.9; 32 (4 sd above) is never reached by a correct method, and the old bootstrap gave ≈ 80 for the
    # subspace excess (100% "stable" at 8–16 elites)
    stable = {"mean_consensus": [], "subspace_excess": []}
    for n in ELITES:
        for seed in range(SEEDS):
            rng = np.random.default_rng(1000 * n + seed)
            x, rewards = rng.standard_normal((n, 256)), rng.uniform(0.2, 0.6, n)
            stats = split_half(x, k=8, splits=5, seed=seed, draws=99, rewards=rewards, beta=10.0)
            for name, st in stats.items():
                assert st.lower <= st.mean, (n, seed, name)
                stable[name].append(st.stable)
    for name, flags in stable.items():
        flags = np.array(flags).reshape(len(ELITES), SEEDS)
        assert flags.sum() < 32, (name, flags.sum(axis=1))
        assert flags.sum(axis=1).max() <= 8, (name, flags.sum(axis=1))  # no elite count is singled out (P < 0.001 each)


def test_the_table_counts_the_methods_elites(tmp_path, tiny_model):
    # 16 entries with distinct rewards at quantile 0.5: corp's elites are the top 16 − ⌈0.5·15⌉ = 8, not 16
    population = [{"seed": 10 + i, "sigma": 0.01, "reward": 0.3 + 0.01 * i} for i in range(16)]
    data = given_rewards_recipe(tiny_model, tmp_path / "out", population=population)
    result = run_cli("diagnose", str(write_recipe(tmp_path, data)), "--top", "16", "--splits", "5")
    assert result.returncode == 0, result.stderr
    assert "of 8 elites (the top of 16 entries at quantile 0.5" in " ".join(result.stdout.split())
    few = given_rewards_recipe(tiny_model, tmp_path / "out", population=population[:5])
    refused = run_cli("diagnose", str(write_recipe(tmp_path, few, "few.yaml")))
    assert refused.returncode == 2 and "needs at least 4 elites, and 5 entries give 3 at quantile 0.5" in refused.stderr
    assert yaml.safe_load(write_recipe(tmp_path, data).read_text())["parameters"]["quantile"] == 0.5
