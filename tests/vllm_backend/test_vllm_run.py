"""`corpmerge run` with `scoring.backend: vllm`: racing, gate, held-out report, resume after kill -9, the shipped check."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import run_cli, scoring_recipe, write_recipe
from test_distributed import finish, launcher, spawn  # noqa: F401 (fixture)
from vllm_tiny import ENGINE_ARGS, vllm_model, vllm_tasks  # noqa: F401 (fixtures)


def vllm_recipe(base: Path, tasks: Path, out: Path, **overrides) -> dict:
    data = scoring_recipe(base, tasks, out, **overrides)
    data["scoring"].update(backend="vllm", model_args=ENGINE_ARGS)
    return data


def units(db: Path) -> dict[tuple[str, str], float]:
    """{(subject, fold): when its evaluation was committed}."""
    try:
        with sqlite3.connect(db) as con:
            return {(subject, fold): t for subject, fold, t in con.execute("SELECT subject, fold, finished FROM units")}
    except sqlite3.OperationalError:  # not created yet, or being written
        return {}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, vllm_model, vllm_tasks) -> tuple[Path, dict, dict, subprocess.CompletedProcess]:
    """`score` killed with SIGKILL after a few entries, then `run` on the same recipe."""
    folder = tmp_path_factory.mktemp("vllm-run")
    data = vllm_recipe(vllm_model, vllm_tasks, folder / "out", population={"size": 24, "sigmas": [0.05, 0.1], "seed": 1}, evaluate={"limit": 12})
    recipe = write_recipe(folder, data)
    db = folder / "out.work" / "scores.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, finished = time.time() + 400, {}
    while time.time() < deadline and proc.poll() is None and len(finished) < 4:
        finished = units(db) if db.exists() else {}
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 4 <= len(finished) < 25, "the scoring finished before it could be killed"
    return folder, data, finished, run_cli("run", str(recipe))


def test_a_killed_vllm_run_resumes_without_rescoring_and_ends_with_gate_and_report(resumed_run):
    folder, _, finished, result = resumed_run
    assert result.returncode == 0, result.stderr
    after = units(folder / "out.work" / "scores.sqlite")
    assert {s: after.get(s) for s in finished} == finished  # what finished before the kill was not redone
    with sqlite3.connect(folder / "out.work" / "scores.sqlite") as con:
        rows = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject || ':' || fold || ':' || doc_id) FROM scores").fetchone()
    assert rows[0] == rows[1]  # no example scored twice
    accepted = (folder / "out").exists()
    report = json.loads(((folder / "out") if accepted else (folder / "out.work")).joinpath("report.json").read_text())
    assert report["racing"]["enabled"] and report["racing"]["scored"] == 24
    assert report["gate"]["accepted"] == accepted and report["candidates_tried"] == 2
    assert set(report["evaluation"]["rows"]) >= {"base", "best_entry"}
    assert ("gate passed" if accepted else "ABSTAINED") in result.stdout
    if accepted:
        assert report["shipped_check"]["identical"] and report["shipped_check"]["backend"] == "vllm"


def test_a_vllm_store_is_not_reused_by_the_hf_backend(resumed_run):
    folder, data, _, _ = resumed_run
    hf = {**data, "scoring": {**data["scoring"], "backend": "hf", "model_args": {}}}
    result = run_cli("-q", "score", str(write_recipe(folder, hf, "hf.yaml")))
    assert result.returncode == 2
    assert "(vllm backend, float32 on cpu ≠ hf backend, float32 on cpu)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_written_model_is_the_one_scored_with_one_engine_per_rank_too(tmp_path, vllm_model, vllm_tasks, spawn):
    """Gate off, so a model is always written: the shipped check re-scores fold B on the written folder (a fresh engine in
    one process; rank 0's engine under torchrun). Two ranks, one engine each, score and write exactly what one process does."""
    runs = {}
    for kind in ("single", "torchrun"):
        data = vllm_recipe(
            vllm_model,
            vllm_tasks,
            tmp_path / kind,
            population={"size": 6, "sigmas": [0.1], "seed": 2},
            gate={"enabled": False},
            parameters={"quantile": 0.5, "beta": 10, "alpha": 2},
            evaluate={"limit": 8},
        )
        recipe = write_recipe(tmp_path, data, f"{kind}.yaml")
        if kind == "single":
            result = run_cli("-q", "run", str(recipe))
            assert result.returncode == 0, result.stderr
        else:
            code, _, err = finish(spawn(launcher("torchrun", 2, ["-q", "run", str(recipe)])))
            assert code == 0 and "Traceback" not in err, err
        report = json.loads((tmp_path / kind / "report.json").read_text())
        assert report["shipped_check"] == {
            "fold": "B",
            "examples": 20,
            "identical": True,
            "differing": 0,
            "scoring_dtype": "float32",
            "output_dtype": "float32",
            "backend": "vllm",
        }
        with sqlite3.connect(tmp_path / f"{kind}.work" / "scores.sqlite") as con:
            runs[kind] = sorted(con.execute("SELECT subject, fold, task, doc_id, value, correct, prediction FROM scores"))
        runs[kind + " model"] = (tmp_path / kind / "model.safetensors").read_bytes()
    assert runs["single"] == runs["torchrun"] and runs["single model"] == runs["torchrun model"]
