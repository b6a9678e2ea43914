"""One version, defined in corpmerge/__init__.py: the package metadata, --version, the lineage and the card say it,
CHANGELOG.md's newest release is it, and every version the docs name is a release the CHANGELOG lists."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml
from conftest import given_rewards_recipe
from typer.testing import CliRunner

from corpmerge import __version__

ROOT = Path(__file__).resolve().parent.parent
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\]", re.M)
NAMED = re.compile(r"corpmerge (?:≤ |<= )?(\d+\.\d+(?:\.\d+)?)\b")


def releases() -> list[str]:
    return RELEASE.findall((ROOT / "CHANGELOG.md").read_text())


def test_the_version_is_defined_once_and_is_the_newest_release():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "corpmerge.__version__"}
    assert releases()[0] == __version__
    assert len(set(releases())) == len(releases())


def test_cli_version_prints_it():
    from corpmerge.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"corpmerge {__version__}"


def test_docs_name_only_released_versions():
    known = set(releases())
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "corpmerge").rglob("*.py")]
    unknown = []
    for path in files:
        for version in NAMED.findall(path.read_text()):
            full = version if version.count(".") == 2 else version + ".0"
            if full not in known:
                unknown.append(f"{path.relative_to(ROOT)}: corpmerge {version}")
    assert not unknown, unknown


def test_lineage_and_card_carry_the_version(tmp_path, tiny_model):
    from corpmerge.merge import merge_recipe
    from corpmerge.recipe import Recipe

    out = tmp_path / "merged"
    merge_recipe(Recipe.model_validate(given_rewards_recipe(tiny_model, out)), None, False)
    assert yaml.safe_load((out / "corpmerge.yaml").read_text())["corpmerge_version"] == __version__
    assert f"made with corpmerge {__version__} " in (out / "README.md").read_text()
