"""Issue 44, points 1, 6 and 7: what `validate`, `merge` and `run` refuse, each in one line naming the field or tensor."""

import pytest
import torch
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from test_safety import assert_one_line_error

from corpmerge.errors import CorpmergeError
from corpmerge.output.safetensors_writer import write_weights

# --- 1. non-finite weights never ship -------------------------------------------------------------------------------


def test_validate_refuses_a_sigma_whose_noise_overflows(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out", population={"size": 4, "sigmas": [1e300]}))
    line = assert_one_line_error(run_cli("validate", str(recipe)), "population: σ = 1e+300 times noise values up to 10 exceeds float32's largest")
    assert "docs/sizing.md" in line and not (tmp_path / "out").exists()


def test_validate_notes_a_sigma_above_one_and_merge_compares_it_with_each_tensors_rms(tmp_path, tiny_model):
    population = [{"seed": s, "sigma": 1e6, "reward": r} for s, r in ((1, 0.2), (2, 0.5), (3, 0.4))]
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out", population=population))
    checked = run_cli("validate", str(recipe))
    assert checked.returncode == 0 and "σ = 1e+06 is at least 1" in checked.stdout + checked.stderr
    merged = run_cli("-q", "merge", str(recipe))
    assert merged.returncode == 0, merged.stderr
    (warning,) = [line for line in merged.stderr.splitlines() if "× the RMS" in line]
    assert "σ = 1e+06 is more than 3× the RMS of" in warning and "largest ratio" in warning


def test_merge_refuses_to_write_non_finite_weights(tmp_path, tiny_model):
    population = [{"seed": s, "sigma": 5000.0, "reward": r} for s, r in ((1, 0.2), (2, 0.5), (3, 0.4))]
    data = given_rewards_recipe(tiny_model, tmp_path / "out", population=population, dtype="float16", parameters={"quantile": 0.5, "beta": 10, "alpha": 16})
    result = run_cli("-q", "merge", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "non-finite (inf/NaN) values in float16, so nothing was written" in line and ".weight: θ₀ + Δ has" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


class _Source:
    def __init__(self, tensors):
        self.tensors = tensors

    def names(self):
        return list(self.tensors)

    def info(self, name):
        return self.tensors[name].shape, True, 4

    def tensor(self, name):
        return self.tensors[name].clone()


def test_the_writer_names_the_non_finite_tensor(tmp_path):
    source = _Source({"a.weight": torch.ones(3), "b.weight": torch.ones(2)})
    with pytest.raises(CorpmergeError, match=r"^b.weight: θ₀ \+ Δ has 1 non-finite"):
        write_weights(tmp_path, source, ["a.weight", "b.weight"], lambda n, s: torch.tensor([0.0, float("inf")][: s[0]]), {"b.weight"}, "float32", 10**9)


# --- 6. validate makes run's checks that need no weights --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"evaluate": {"split": "validation"}}, "evaluate.split: split 'validation' not found in task 'tiny_mc' (it has train, test)"),
        ({"scoring": {"support": {"split": "test"}}}, "scoring.support.split: 'test' is task 'tiny_mc''s test split"),
        ({"population": {"size": True, "sigmas": [0.02]}}, "population.size: true is a yes/no value, not a number"),
        ({"population": [{"seed": 1, "sigma": 0.02, "reward": 35}]}, "population[0].reward: a reward is a mean per-example score in [0, 1] (got 35)"),
        ({"evaluate": {"ensemble_k": [50]}}, "evaluate.ensemble_k: a top-50 vote needs 50 entries and the population has 6"),
    ],
    ids=["evaluate split", "support split", "size true", "reward 35", "ensemble_k"],
)
def test_validate_refuses_what_run_would(tmp_path, tiny_model, tiny_task, change, expected):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) and key != "population" else value
    assert_one_line_error(run_cli("validate", str(write_recipe(tmp_path, data))), expected)


# --- 7. errors: a suggestion, the keys, one line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"merge_methd": "best"}, "merge_methd: unknown key; did you mean `merge_method`? (keys here: base_model,"),
        ({"output": {"path": "x", "writ_on_abstain": True}}, "output.writ_on_abstain: unknown key; did you mean `write_on_abstain`?"),
        ({"parameters": {"quantile": 0.5, "bta": 10}}, "parameters.bta: unknown parameter for merge_method 'corp'; did you mean `beta`?"),
    ],
    ids=["merge_methd", "output key", "bta"],
)
def test_a_misspelt_key_gets_a_suggestion_and_the_keys(tmp_path, tiny_model, change, expected):
    data = given_rewards_recipe(tiny_model, tmp_path / "out", **change)
    line = assert_one_line_error(run_cli("validate", str(write_recipe(tmp_path, data))), expected)
    assert "validate --help" not in line


def test_supprt_in_scoring(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["supprt"] = data["scoring"].pop("support")
    assert_one_line_error(run_cli("validate", str(write_recipe(tmp_path, data))), "scoring.supprt: unknown key; did you mean `support`?")


def test_a_folder_or_an_empty_file_as_the_recipe(tmp_path):
    assert_one_line_error(run_cli("validate", str(tmp_path)), f"{tmp_path}: is a folder; give the recipe's YAML file")
    (tmp_path / "empty.yaml").write_text("")
    line = assert_one_line_error(run_cli("validate", str(tmp_path / "empty.yaml")), "empty.yaml: the recipe is empty")
    assert "NoneType" not in line


def test_a_number_with_an_exponent_and_no_dot_is_a_number(tmp_path, tiny_model):
    """YAML 1.1 reads `1e-3` as a string (it wants `1.0e-3`), and strict types would then refuse the σ most people
    write; corpmerge reads it as the float it is (YAML 1.2). Quoted, it stays a string and is refused by name."""
    recipe = given_rewards_recipe(tiny_model, tmp_path / "out")
    del recipe["population"]
    path = write_recipe(tmp_path, recipe)
    head = path.read_text()
    path.write_text(head + "population:\n- {seed: 1, sigma: 1e-2, reward: 5e-01}\n- {seed: 2, sigma: 2E-2, reward: 7.5e-1}\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    path.write_text(head + "population:\n- {seed: 1, sigma: '1e-2', reward: 0.5}\n- {seed: 2, sigma: 0.02, reward: 0.75}\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and "population[0].sigma" in result.stderr, result.stderr[-2000:]
