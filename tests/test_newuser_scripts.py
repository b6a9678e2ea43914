"""Issue 36, item 5: exit codes a script can use (`run --strict`), advice after an abstention, `corpmerge rebuild`."""

import shutil

import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe


def test_an_abstention_says_what_to_try_and_strict_exits_3(tmp_path, tiny_model, tiny_task):
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tiny_task, tmp_path / "out", gate={"enabled": True, "z": 100.0}))
    plain = run_cli("-q", "run", str(recipe))
    assert plain.returncode == 0 and "what to try next" in plain.stdout and "Sizing a run" in plain.stdout
    strict = run_cli("-q", "run", str(recipe), "--strict")  # resumes from the store: nothing is scored again
    assert strict.returncode == 3 and "ABSTAINED" in strict.stdout and not (tmp_path / "out").exists()


def test_rebuild_writes_the_same_bits_and_says_so(tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run_cli("-q", "merge", str(write_recipe(tmp_path, given_rewards_recipe(tiny_model, out)))).returncode == 0
    again = run_cli("-q", "rebuild", str(out / "corpmerge.yaml"), "-o", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert "tensors equal the shipped ones bit for bit" in again.stdout
    assert (tmp_path / "again" / "corpmerge.yaml").is_file()

    # a lineage whose table was edited: the rebuilt weights differ, and the exit code says so
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    lineage = yaml.safe_load((edited / "corpmerge.yaml").read_text())
    lineage["lineage"][0]["amplitude"] *= 2
    (edited / "corpmerge.yaml").write_text(yaml.safe_dump(lineage))
    differs = run_cli("-q", "rebuild", str(edited), "-o", str(tmp_path / "differs"))
    assert differs.returncode == 4 and "differ from the shipped ones" in differs.stdout


def test_rebuild_refuses_what_is_not_a_lineage(tmp_path):
    (tmp_path / "x.yaml").write_text("a: 1\n")
    result = run_cli("rebuild", str(tmp_path / "x.yaml"), "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "not a corpmerge lineage" in result.stderr and not (tmp_path / "o").exists()
