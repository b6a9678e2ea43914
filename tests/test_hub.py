"""Pushes with the real huggingface_hub client over HTTP to a loopback Hub-compatible server."""

import hashlib
from pathlib import Path

import pytest
from conftest import given_rewards_recipe, run_cli, write_recipe
from hubserver import HubServer

TOKEN = "hf_corpmergeTestToken1234567890"


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def merged(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("push")
    recipe = write_recipe(folder, given_rewards_recipe(tiny_model, folder / "out", output={"path": str(folder / "out"), "max_shard_size": "40KB"}))
    assert run_cli("-q", "merge", str(recipe)).returncode == 0
    return folder / "out"


@pytest.fixture
def hub():
    with HubServer(TOKEN) as server:
        yield server


def env(hub, tmp_path, token=TOKEN):
    values = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    values["HF_TOKEN"] = token or ""
    return values


def assert_no_token(result):
    assert TOKEN not in result.stdout and TOKEN not in result.stderr


def test_push_uploads_every_file_byte_identical_and_updates(merged, hub, tmp_path):
    result = run_cli("push", str(merged), "me/corp-model", "--private", env=env(hub, tmp_path))
    assert result.returncode == 0, result.stderr
    assert_no_token(result)
    tree = hub.state.repos["me/corp-model"]["branches"]["main"]
    assert set(tree) == {p.name for p in merged.iterdir()}
    assert all(tree[name] == (merged / name).read_bytes() for name in tree if name != "README.md")
    card = tree["README.md"].decode()  # the card's lm-eval command names the repo, not the local folder
    assert f"pretrained={merged.resolve()}" in (merged / "README.md").read_text() and "pretrained=me/corp-model," in card
    assert card.replace("pretrained=me/corp-model", f"pretrained={merged.resolve()}") == (merged / "README.md").read_text()
    assert hub.state.repos["me/corp-model"]["private"] is True
    assert b"library_name: transformers" in tree["README.md"] and b"corpmerge" in tree["README.md"]
    posts = [h for h in hub.state.requests if h[0] == "POST"]
    assert posts and all(h[2].get("authorization") == f"Bearer {TOKEN}" for h in posts)
    again = run_cli("-q", "push", str(merged), "me/corp-model", "--commit-message", "second", env=env(hub, tmp_path))
    assert again.returncode == 0, again.stderr
    assert len(hub.state.commits) == 2
    assert hub.state.commits[-1]["lines"][0]["value"]["summary"] == "second"


def test_push_to_a_branch(merged, hub, tmp_path):
    result = run_cli("-q", "push", str(merged), "me/corp-model", "--revision", "experiment", env=env(hub, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "config.json" in hub.state.repos["me/corp-model"]["branches"]["experiment"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no token", "no Hugging Face token found"),
        ("wrong token", "refused the token (HTTP 401)"),
        ("server error", "answered an error"),
        ("bad repo id", "is not a valid repo id"),
        ("server down", "cannot reach"),
        ("incomplete folder", "not a complete model folder"),
    ],
)
def test_push_failures_are_one_line_and_lose_nothing(merged, hub, tmp_path, case, expected):
    before = digest(merged)
    values = env(hub, tmp_path)
    folder, repo = merged, "me/corp-model"
    if case == "no token":
        values["HF_TOKEN"] = ""
    elif case == "wrong token":
        values["HF_TOKEN"] = "hf_wrongTokenABCDEFGHIJKLMNOP"
    elif case == "server error":
        hub.state.fail_with = 500
    elif case == "bad repo id":
        repo = "not a repo!"
    elif case == "server down":
        values["HF_ENDPOINT"] = "http://127.0.0.1:9"
    elif case == "incomplete folder":
        folder = tmp_path / "half"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    result = run_cli("push", str(folder), repo, env=values)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert_no_token(result)
    assert "hf_wrongToken" not in result.stderr
    assert digest(merged) == before
    assert not any(commit["repo"] == repo for commit in hub.state.commits)


def test_recipe_push_to_hub_after_merge(tmp_path, tiny_model, hub):
    out = tmp_path / "out"
    data = given_rewards_recipe(tiny_model, out, output={"path": str(out), "push_to_hub": "me/from-recipe", "private": True})
    result = run_cli("merge", str(write_recipe(tmp_path, data)), env=env(hub, tmp_path))
    assert result.returncode == 0, result.stderr
    assert_no_token(result)
    tree = hub.state.repos["me/from-recipe"]["branches"]["main"]
    assert tree["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert "corpmerge.yaml" in tree


def test_recipe_rejects_a_bad_repo_id(tmp_path, tiny_model):
    data = given_rewards_recipe(tiny_model, tmp_path / "out", output={"path": str(tmp_path / "out"), "push_to_hub": "no spaces/allowed here"})
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2 and "output.push_to_hub" in result.stderr
