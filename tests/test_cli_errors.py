"""Every bad input gets one line naming the field and the fix, exit code 2, no traceback."""

import math

import pytest
from conftest import given_rewards_recipe, run_cli, write_recipe


def population(**changes):
    pop = [{"seed": 1, "sigma": 0.001, "reward": 0.4}, {"seed": 2, "sigma": 0.002, "reward": 0.5}]
    pop[1].update(changes)
    return pop


CASES = {
    "unknown key": ({"temperature": 3}, "temperature: unknown key"),
    "nested unknown key": ({"output": {"path": "x", "shard": "1GB"}}, "output.shard: unknown key"),
    "zero sigma": ({"population": population(sigma=0)}, "population[1].sigma: Input should be greater than 0"),
    "negative sigma": ({"population": population(sigma=-0.1)}, "population[1].sigma: Input should be greater than 0"),
    "duplicate seed": ({"population": population(seed=1)}, "population[1].seed: seed 1 appears twice"),
    "nan reward": ({"population": population(reward=math.nan)}, "population[1].reward: must be a finite number"),
    "inf reward": ({"population": population(reward=math.inf)}, "population[1].reward: must be a finite number"),
    "missing reward": ({"population": population(reward=None)}, "population[1].reward: missing; merge_method 'corp' needs a reward"),
    "sampled without scoring": ({"population": {"size": 4, "sigmas": [0.001]}}, "population: a sampled population has no rewards yet"),
    "unknown method": ({"merge_method": "slerp"}, "merge_method: unknown method 'slerp'; use one of best, corp"),
    "unknown dtype": ({"dtype": "float64"}, "dtype: 'float64' is not supported; use one of float32, bfloat16, float16"),
    "base not found": ({"base_model": "./no/such/model"}, "base_model: './no/such/model' not found"),
    "bad shard size": ({"output": {"path": "x", "max_shard_size": "2XB"}}, "output.max_shard_size: '2XB' is not a size"),
    "unknown parameter": ({"parameters": {"temp": 1}}, "parameters.temp: unknown parameter for merge_method 'corp'"),
    "grid without gate": ({"parameters": {"beta": [1, 5]}}, "parameters: a list value is a grid"),
    "gate without scoring": ({"gate": {"enabled": True}}, "gate.enabled: the gate needs scoring"),
    "bad noise scheme": ({"noise": "torch-v0"}, "noise: scheme 'torch-v0' is not supported"),
}


# merge shares validate's checks, so a sample of the cases is enough there
PAIRS = [(case, "validate") for case in CASES] + [(case, "merge") for case in ("unknown key", "duplicate seed", "base not found", "missing reward")]


@pytest.mark.parametrize(("case", "command"), PAIRS)
def test_bad_recipe_gets_one_line(tmp_path, tiny_model, case, command):
    change, expected = CASES[case]
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out", **change))
    result = run_cli(command, str(recipe))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert str(recipe) in result.stderr or expected.split(":")[0] in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_and_bad_yaml(tmp_path):
    missing = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "recipe file not found" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: [unclosed\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2 and "not valid YAML (line" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_ok(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out"))
    result = run_cli("validate", str(recipe))
    assert result.returncode == 0 and "ok" in result.stdout
    assert not (tmp_path / "out").exists()


def test_help_explains_every_command():
    for command in ["", "validate", "merge", "score", "run", "diagnose", "ensemble", "push", "methods", "tasks"]:
        result = run_cli(*([command] if command else []), "--help")
        assert result.returncode == 0 and "Usage" in result.stdout
