"""Both noise schemes through the tool: the legacy scheme rebuilds corpmerge 0.3's bits; a recipe, store and lineage name theirs."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from safetensors.torch import load_file

from corpmerge.amplitudes import Amplitudes
from corpmerge.methods.ties import TiesDelta
from corpmerge.noise import DEFAULT_SCHEME, LEGACY_SCHEME

# Δ as corpmerge 0.3 (94a3f5e) computed it, sha256 of the float32 bytes, first 16 hex digits
CORPMERGE_0_3 = {"one seed": "5071ee9afb1d5ff2", "three seeds": "29411e376f138d97", "large": "b728a70e0bb4e899", "ties": "971c1b55d6fc8764"}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def test_the_legacy_scheme_rebuilds_the_bits_corpmerge_0_3_wrote():
    deltas = {
        "one seed": Amplitudes(np.array([11]), np.array([1e-3])).delta("model.layers.0.mlp.up_proj.weight", (64, 32), scheme=LEGACY_SCHEME),
        "three seeds": Amplitudes(np.array([11, 12, 13]), np.array([1e-3, -2e-3, 5e-4])).delta(
            "model.layers.0.mlp.up_proj.weight", (64, 32), scheme=LEGACY_SCHEME
        ),
        "large": Amplitudes(np.array([7, 8]), np.array([0.3, 0.7])).delta("model.embed_tokens.weight", (3 * 65536 + 5,), scheme=LEGACY_SCHEME),
        "ties": TiesDelta(np.array([5, 6, 7]), np.diag([0.01, 0.02, 0.03]), 0.3)("w", torch.Size([300, 70]), LEGACY_SCHEME),
    }
    assert {k: digest(v) for k, v in deltas.items()} == CORPMERGE_0_3


def test_the_new_scheme_sums_seeds_as_separate_products_and_adds():
    """Δ = round(a₁ε₁) + round(a₂ε₂) + …: no fused multiply-add, so every device forms the same sum."""
    from corpmerge.noise import gaussian

    amps = Amplitudes(np.array([11, 12, 13]), np.array([1e-3, -2e-3, 5e-4]))
    eps = [gaussian(int(s), "w", (64, 32)) for s in amps.seeds]
    expected = torch.mul(eps[0], 1e-3)
    for e, a in zip(eps[1:], amps.values[1:]):
        expected = expected + torch.mul(e, float(a))
    assert torch.equal(amps.delta("w", (64, 32)), expected)


def test_a_legacy_recipe_writes_and_records_its_scheme_and_the_default_is_the_new_one(tmp_path, tiny_model):
    for scheme, name in ((LEGACY_SCHEME, "legacy"), (None, "default")):
        data = given_rewards_recipe(tiny_model, tmp_path / name, merge_method="reward_avg", parameters={"quantile": 0.5, "beta": 10})
        if scheme:
            data["noise"] = scheme
        result = run_cli("-q", "merge", str(write_recipe(tmp_path, data, f"{name}.yaml")))
        assert result.returncode == 0, result.stderr
        lineage = yaml.safe_load((tmp_path / name / "corpmerge.yaml").read_text())
        assert lineage["noise"] == lineage["recipe"]["noise"] == (scheme or DEFAULT_SCHEME)
        written = load_file(tmp_path / name / "model.safetensors")
        theta = load_file(tiny_model / "model.safetensors")
        amps = Amplitudes(np.array([r["seed"] for r in lineage["lineage"]]), np.array([r["amplitude"] for r in lineage["lineage"]]))
        name0 = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(written[name0], theta[name0] + amps.delta(name0, theta[name0].shape, scheme=scheme or DEFAULT_SCHEME))


def test_an_unknown_scheme_is_one_line_naming_the_field(tmp_path, tiny_model):
    data = given_rewards_recipe(tiny_model, tmp_path / "out", noise="torch-normal-v0")
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "noise" in result.stderr and DEFAULT_SCHEME in result.stderr and LEGACY_SCHEME in result.stderr


def test_a_store_of_the_legacy_scheme_says_how_to_resume_it(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", noise=LEGACY_SCHEME)
    data["population"]["size"] = 2
    assert run_cli("-q", "score", str(write_recipe(tmp_path, data))).returncode == 0
    del data["noise"]  # a 0.3 recipe: no noise key, so the new default
    for command in ("validate", "score"):
        result = run_cli(command, str(write_recipe(tmp_path, data)))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"add `noise: {LEGACY_SCHEME}` to the recipe to resume it" in result.stderr
