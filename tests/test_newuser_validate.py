"""Issue 36, item 4: `validate` checks what it can without weights, and writes nothing on a refusal."""

from conftest import run_cli, scoring_recipe, write_recipe


def one_line(result, expected: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert expected in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_an_unknown_task_is_refused_by_validate_and_run_before_anything_is_written(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["tasks"] = ["tiny_mcq"]
    recipe = write_recipe(tmp_path, data)
    for command in ("validate", "run"):
        one_line(run_cli("-q", command, str(recipe)), "scoring.tasks: unknown task(s) tiny_mcq; see `corpmerge tasks`")
        assert not (tmp_path / "out.work").exists() and not (tmp_path / "out").exists()


def test_a_hub_id_not_in_the_cache_is_refused_offline(tmp_path):
    data = scoring_recipe("org/not-downloaded", tmp_path, tmp_path / "out")
    del data["scoring"]
    data.update(population=[{"seed": 1, "sigma": 0.01, "reward": 0.5}], gate={"enabled": False}, parameters={"quantile": 0.5})
    result = run_cli("validate", str(write_recipe(tmp_path, data)), env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    one_line(result, "base_model: 'org/not-downloaded' is not in the Hugging Face cache and HF_HUB_OFFLINE is set")


def test_a_store_made_for_another_fold_assignment_is_refused_by_validate(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 2, "sigmas": [0.02], "seed": 3})
    assert run_cli("-q", "score", str(write_recipe(tmp_path, data))).returncode == 0
    store = tmp_path / "out.work" / "scores.sqlite"
    before = store.read_bytes()
    data["scoring"]["support"]["split_seed"] = 1
    one_line(run_cli("validate", str(write_recipe(tmp_path, data))), "this score store was made for a different fold assignment")
    assert store.read_bytes() == before  # only read


def test_version_alone():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("corpmerge ")
