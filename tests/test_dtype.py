"""Scoring in the output dtype: the gate validates the bits that ship (issue: scoring dtype, θ₀ on the host, the writer
reads the checkpoint, the shipped check)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli, scoring_recipe, write_recipe
from safetensors.torch import load_file, save_file

from corpmerge.amplitudes import Amplitudes
from corpmerge.methods import MergeResult
from corpmerge.model_io import resolve_base
from corpmerge.output.folder import write_output
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring import session as session_module
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session
from corpmerge.scoring.shipped import shipped_check

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def bf16_recipe(tiny_model: Path, tiny_task: Path, out: Path, **overrides) -> dict:
    data = scoring_recipe(tiny_model, tiny_task, out, gate={"enabled": False}, parameters={"quantile": 0.5, "beta": 10, "alpha": 2})
    data["dtype"] = "bfloat16"
    data.update(overrides)
    return data


def lineage_update(folder: Path) -> MergeResult:
    table = yaml.safe_load((folder / "corpmerge.yaml").read_text())["lineage"]
    amps = Amplitudes(np.array([r["seed"] for r in table], dtype=np.int64), np.array([r["amplitude"] for r in table], dtype=float))
    return MergeResult("lineage", {}, np.arange(len(table)), np.ones(len(table)), amplitudes=amps)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_model, tiny_task) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("bf16")
    data = bf16_recipe(tiny_model, tiny_task, folder / "out")
    result = run_cli("-q", "run", str(write_recipe(folder, data)))
    assert result.returncode == 0, result.stderr
    return folder, data


def test_a_bfloat16_run_writes_exactly_the_tensors_it_scored(bf16_run):
    folder, data = bf16_run
    out = folder / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["shipped_check"] == {
        "fold": "B",
        "examples": 20,
        "identical": True,
        "differing": 0,
        "scoring_dtype": "bfloat16",
        "output_dtype": "bfloat16",
        "backend": "hf",
    }
    assert "shipped check" in (out / "README.md").read_text()
    written = load_file(out / "model.safetensors")
    session = open_session(parse_recipe(data))
    try:
        assert session.scorer.dtype == torch.bfloat16
        session.scorer.apply(lineage_update(out))  # the accepted candidate, as the gate scored it
        scored = dict(session.model.named_parameters())
        assert set(session.scorer.theta0) <= set(written)
        for name in session.scorer.theta0:
            assert written[name].dtype == torch.bfloat16 and torch.equal(scored[name].detach(), written[name]), name
    finally:
        session.close()


def test_a_float32_store_is_not_reused_for_a_bfloat16_run(tmp_path, tiny_model, tiny_task):
    store = tmp_path / "scores.sqlite"
    f32 = scoring_recipe(tiny_model, tiny_task, tmp_path / "a", population={"size": 2, "sigmas": [0.02], "seed": 1})
    f32["scoring"]["store"] = str(store)
    assert run_cli("-q", "score", str(write_recipe(tmp_path, f32, "f32.yaml"))).returncode == 0
    bf16 = {**f32, "dtype": "bfloat16", "output": {"path": str(tmp_path / "b")}}
    result = run_cli("-q", "score", str(write_recipe(tmp_path, bf16, "bf16.yaml")))
    assert result.returncode == 2
    assert "different scoring setup (backend, scoring dtype, device type) (hf backend, float32 on cpu ≠ hf backend, bfloat16 on cpu)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_validate_says_in_one_line_when_the_scored_dtype_is_not_the_written_one(tmp_path, tiny_model, tiny_task):
    data = bf16_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["dtype"] = "float32"
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    assert "scoring.dtype: models are scored in float32 but written in bfloat16" in result.stdout + result.stderr


def test_the_shipped_check_fails_loudly_on_a_tampered_folder(bf16_run, tmp_path, caplog):
    folder, data = bf16_run
    tampered = tmp_path / "tampered"
    shutil.copytree(folder / "out", tampered)
    weights = load_file(tampered / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    weights = {k: (torch.randn(v.shape, generator=generator) * 0.5).to(v.dtype) for k, v in weights.items()}
    save_file(weights, str(tampered / "model.safetensors"), metadata={"format": "pt"})
    session = open_session(parse_recipe(data))
    try:
        subject = next(s for s in session.store.subjects("B") if s != "base")
        scored = session.store.load(subject, "B")
        assert shipped_check(session.backend, session.suite, folder / "out", session.folds["B"], scored)["identical"]
        with caplog.at_level(logging.ERROR, logger="corpmerge"):
            check = shipped_check(session.backend, session.suite, tampered, session.folds["B"], scored)
    finally:
        session.close()
    assert check["identical"] is False and check["differing"] > 0 and check["examples"] == 20
    assert any("differs from the one the gate scored" in r.message for r in caplog.records)


def test_the_writer_never_reads_the_scorers_state(bf16_run, tmp_path):
    folder, data = bf16_run
    recipe = parse_recipe(data)
    update = lineage_update(folder / "out")
    rows = yaml.safe_load((folder / "out" / "corpmerge.yaml").read_text())["recipe"]["population"]
    entries = [Entry(r["seed"], r["sigma"], r["reward"]) for r in rows]
    session = open_session(recipe)
    try:

        def write(target: Path) -> bytes:
            write_output(
                target, recipe=recipe, entries=entries, result=update, tokenizer=session.tokenizer, base=resolve_base(recipe.base_model), ref=session.ref
            )
            return (target / "model.safetensors").read_bytes()

        before = write(tmp_path / "one")
        with torch.no_grad():
            for param in session.model.parameters():
                param.fill_(7.0)  # the live model ruined after scoring
        session.scorer.apply(update)  # and left perturbed
        assert write(tmp_path / "two") == before
    finally:
        session.close()
    assert before == (folder / "out" / "model.safetensors").read_bytes()


def test_theta0_goes_to_the_scoring_device_in_its_stored_precision(tmp_path, tiny_model, tiny_task, monkeypatch):
    monkeypatch.setattr(session_module, "scoring_device", lambda: torch.device("meta"))
    session = open_session(parse_recipe(bf16_recipe(tiny_model, tiny_task, tmp_path / "out")))
    try:
        assert {p.device.type for p in session.model.parameters()} == {"meta"}
        assert {p.dtype for p in session.model.parameters()} == {torch.bfloat16}  # one copy, 2 bytes per parameter
        assert session.theta0.where == "device" and {t.device.type for t in session.scorer.theta0.values()} == {"meta"}
        assert {t.dtype for t in session.scorer.theta0.values()} == {torch.float32}  # the checkpoint's own precision
        assert {t.device.type for t in (session.scorer.scratch, session.scorer.noise_buffer)} == {"meta"}
        update = entry_update(Entry(3, 0.01))
        values = dict(session.scorer._values(update))  # θ₀ + Δ formed where the model is, in the scoring dtype
        assert values.keys() == session.scorer.theta0.keys()
        assert {(v.device.type, v.dtype) for v in values.values()} == {("meta", torch.bfloat16)}
        assert session.store.path.exists()
    finally:
        session.close()
