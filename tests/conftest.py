import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import build_tiny_model, write_mc_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_untied(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-untied") / "model", tie=False, seed=1)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> Path:
    return write_mc_task(tmp_path_factory.mktemp("tasks"))


def scoring_recipe(base: Path, tasks: Path, out: Path, **overrides) -> dict:
    """A recipe with a sampled population scored on the tiny task."""
    data = {
        "base_model": str(base),
        "population": {"size": 6, "sigmas": [0.02, 0.05], "seed": 3},
        "scoring": {
            "tasks": ["tiny_mc"],
            "include_path": str(tasks),
            "support": {"limit": 80, "split_seed": 0},
            "batch_size": 8,
        },
        "merge_method": "corp",
        "parameters": {"quantile": [0.5], "beta": [1, 10], "alpha": [1]},
        "gate": {"enabled": True, "z": 0.0, "regression_penalty": 1.0},
        "output": {"path": str(out)},
    }
    data.update(overrides)
    return data


def write_recipe(folder: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def given_rewards_recipe(base: Path, out: Path, **overrides) -> dict:
    data = {
        "base_model": str(base),
        "population": [
            {"seed": 101, "sigma": 0.01, "reward": 0.40},
            {"seed": 102, "sigma": 0.02, "reward": 0.55},
            {"seed": 103, "sigma": 0.01, "reward": 0.62},
            {"seed": 104, "sigma": 0.03, "reward": 0.58},
            {"seed": 105, "sigma": 0.02, "reward": 0.30},
        ],
        "merge_method": "corp",
        "parameters": {"quantile": 0.5, "beta": 10, "alpha": 1},
        "gate": {"enabled": False},
        "output": {"path": str(out)},
    }
    data.update(overrides)
    return data


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "corpmerge", *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)
