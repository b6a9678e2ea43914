"""One writer per score store, with real processes: a second run waits for the first and evaluates nothing twice;
a lock left by a run killed with ``kill -9`` never blocks the next one."""

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
from conftest import run_cli, scoring_recipe, write_recipe

RUN_TIMEOUT_S = 600


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "corpmerge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{proc.args} did not finish within {RUN_TIMEOUT_S} s (hang)")
    return proc.returncode, err


def report_of(out: Path) -> dict:
    path = out / "report.json" if (out / "report.json").exists() else Path(f"{out}.work") / "report.json"
    return json.loads(path.read_text())


def test_two_runs_on_one_store_started_together_evaluate_nothing_twice(tmp_path, tiny_model, tiny_task):
    store = tmp_path / "shared.sqlite"
    recipes = []
    for name in ("one", "two"):
        data = scoring_recipe(tiny_model, tiny_task, tmp_path / name, evaluate={"limit": 8})
        data["scoring"]["store"] = str(store)
        recipes.append(write_recipe(tmp_path, data, f"{name}.yaml"))
    procs = [start("run", str(recipe)) for recipe in recipes]
    results = [finish(proc) for proc in procs]
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    reports = [report_of(tmp_path / name) for name in ("one", "two")]
    evaluations = [r["evaluations"] for r in reports]
    assert sorted(evaluations)[0] == 0 and sorted(evaluations)[1] > 6, evaluations  # the second found everything stored
    waiter = evaluations.index(0)
    holder = procs[1 - waiter].pid
    assert f"is in use by another corpmerge run (pid {holder} " in results[waiter][1], results[waiter][1][-2000:]
    for key in ("gate", "candidates", "base", "chosen", "population", "racing"):
        assert reports[0].get(key) == reports[1].get(key), key  # the same decisions from the same scores
    with sqlite3.connect(store) as con:
        total, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject || fold || task || doc_id) FROM scores").fetchone()
        assert total == distinct


def test_a_lock_left_by_a_run_killed_with_kill_9_never_blocks_the_next(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 48, "sigmas": [0.02, 0.05], "seed": 5})
    recipe = write_recipe(tmp_path, data)
    db = tmp_path / "out.work" / "scores.sqlite"
    proc = start("-q", "score", str(recipe))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                if con.execute("SELECT COUNT(*) FROM units").fetchone()[0] >= 3:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the first run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert (tmp_path / "out.work" / "scores.sqlite.lock").exists()  # the file stays; the kernel dropped the lock
    result = run_cli("-q", "score", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in use by another corpmerge run" not in result.stderr
