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
from runs import finish, spawn  # noqa: F401 (fixture)
from tiny import build_tiny_model
from vllm_tiny import ENGINE_ARGS, SPLITTABLE, vllm_model, vllm_tasks  # noqa: F401 (fixtures)


def vllm_recipe(base: Path, tasks: Path, out: Path) -> dict:
    """Gate on; on abstention the base is written, so the shipped check always runs."""
    data = scoring_recipe(
        base,
        tasks,
        out,
        population={"size": 24, "sigmas": [0.05, 0.1], "seed": 1},
        evaluate={"limit": 12},
        output={"path": str(out), "write_on_abstain": True},
    )
    data["scoring"].update(backend="vllm", model_args=ENGINE_ARGS)
    return data


def units(db: Path) -> dict[tuple[str, str], float]:
    """{(subject, fold): when its evaluation was committed}."""
    try:
        with sqlite3.connect(db) as con:
            return {(subject, fold): t for subject, fold, t in con.execute("SELECT subject, fold, finished FROM units")}
    except sqlite3.OperationalError:  # not created yet, or being written
        return {}


def stored(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("SELECT subject, fold, task, doc_id, value, correct, prediction FROM scores"))


SHIPPED = {"fold": "B", "examples": 20, "identical": True, "differing": 0, "scoring_dtype": "float32", "output_dtype": "float32", "backend": "vllm"}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, vllm_model, vllm_tasks) -> tuple[Path, dict, dict, subprocess.CompletedProcess]:
    """`score` killed with SIGKILL after a few entries, then `run` on the same recipe."""
    folder = tmp_path_factory.mktemp("vllm-run")
    data = vllm_recipe(vllm_model, vllm_tasks, folder / "out")
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


def test_a_killed_vllm_run_resumes_without_rescoring_and_ends_with_gate_report_and_shipped_check(resumed_run):
    folder, _, finished, result = resumed_run
    assert result.returncode == 0, result.stderr
    db = folder / "out.work" / "scores.sqlite"
    assert {key: units(db).get(key) for key in finished} == finished  # what finished before the kill was not redone
    rows = stored(db)
    assert len(rows) == len({row[:4] for row in rows})  # no example scored twice
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["racing"]["enabled"] and report["racing"]["scored"] == 24
    assert report["candidates_tried"] == 2 and ("gate passed" if report["gate"]["accepted"] else "ABSTAINED") in result.stdout
    assert set(report["evaluation"]["rows"]) >= {"base", "best_entry"}
    assert report["shipped_check"] == SHIPPED  # the written folder, on a fresh engine, scores what was scored


def test_a_vllm_store_is_not_reused_by_the_hf_backend(resumed_run):
    folder, data, _, _ = resumed_run
    hf = {**data, "scoring": {**data["scoring"], "backend": "hf", "model_args": {}}}
    result = run_cli("-q", "score", str(write_recipe(folder, hf, "hf.yaml")))
    assert result.returncode == 2
    assert "(vllm backend, float32 on cpu ≠ hf backend, float32 on cpu)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_ray_worker_with_its_own_engine_scores_and_writes_what_one_process_does(resumed_run, vllm_model, vllm_tasks, spawn):
    """`scoring.workers: 1`: a Ray actor (on a local cluster the run starts) holds a vLLM engine of its own beside the driver's."""
    pytest.importorskip("ray")
    folder, _, _, _ = resumed_run
    data = vllm_recipe(vllm_model, vllm_tasks, folder / "ray")
    data["scoring"]["workers"] = 1
    code, _, err = finish(spawn([sys.executable, "-m", "corpmerge", "-q", "run", str(write_recipe(folder, data, "ray.yaml"))], env={"RAY_ADDRESS": ""}))
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert stored(folder / "ray.work" / "scores.sqlite") == stored(folder / "out.work" / "scores.sqlite")
    assert (folder / "ray" / "model.safetensors").read_bytes() == (folder / "out" / "model.safetensors").read_bytes()
    assert json.loads((folder / "ray" / "report.json").read_text())["shipped_check"] == SHIPPED
    assert "1 Ray workers ready (vllm backend" in (folder / "ray.work" / "corpmerge.log").read_text()


def test_score_with_two_tensor_parallel_ranks(tmp_path, vllm_tasks):
    """`model_args: {tensor_parallel_size: 2}`: vLLM's worker processes hold half of each projection each; every entry is scored."""
    base = build_tiny_model(tmp_path / "model", **SPLITTABLE)
    data = scoring_recipe(base, vllm_tasks, tmp_path / "out", population={"size": 4, "sigmas": [0.05], "seed": 1})
    data["scoring"].update(backend="vllm", model_args={**ENGINE_ARGS, "tensor_parallel_size": 2})
    result = run_cli("-q", "score", str(write_recipe(tmp_path, data)), env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(tmp_path / "out.work" / "scores.sqlite") as con:
        subjects = {subject for (subject,) in con.execute("SELECT DISTINCT subject FROM units")}
    assert len(subjects) == 5  # the base and 4 entries
