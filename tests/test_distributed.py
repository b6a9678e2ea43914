"""Population scoring spread over two real processes (accelerate launch, gloo on CPU)."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli, scoring_recipe, write_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe: Path, processes: int) -> subprocess.Popen:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "corpmerge", "-q", "score", str(recipe),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def rows(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return {(s, t, d): (v, c) for s, t, d, v, c in con.execute("SELECT subject, task, doc_id, value, correct FROM scores")}


def units(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return dict(con.execute("SELECT subject, finished FROM units"))


def recipe_for(tmp_path, tiny_model, tiny_task, name, size):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / name, population={"size": size, "sigmas": [0.02, 0.05], "seed": 5})
    return write_recipe(tmp_path, data, f"{name}.yaml"), tmp_path / f"{name}.work" / "scores.sqlite"


def test_two_processes_score_like_one(tmp_path, tiny_model, tiny_task):
    single, single_db = recipe_for(tmp_path, tiny_model, tiny_task, "single", 8)
    double, double_db = recipe_for(tmp_path, tiny_model, tiny_task, "double", 8)
    assert run_cli("-q", "score", str(single)).returncode == 0
    proc = launch(double, 2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert rows(double_db) == rows(single_db)  # identical per-example scores, nothing lost or doubled
    assert len(units(double_db)) == 9  # 8 entries + the base


def test_killed_worker_then_relaunch_with_another_count(tmp_path, tiny_model, tiny_task):
    recipe, db = recipe_for(tmp_path, tiny_model, tiny_task, "killed", 80)
    proc = launch(recipe, 2)
    deadline = time.time() + 240
    before = {}
    while time.time() < deadline and proc.poll() is None:
        try:
            before = units(db) if db.exists() else {}
        except sqlite3.OperationalError:
            before = {}
        if len(before) >= 6:
            break
        time.sleep(0.05)
    worker = _worker_with_rank(proc.pid, "1")
    assert worker is not None, "the launched worker was not found"
    os.kill(worker, signal.SIGKILL)
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert 6 <= len(before) < 81
    result = run_cli("-q", "score", str(recipe))  # relaunch with one process
    assert result.returncode == 0, result.stderr
    after = units(db)
    assert len(after) == 81
    assert all(after[s] == t for s, t in before.items())
    with sqlite3.connect(db) as con:
        total, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject || ':' || doc_id) FROM scores").fetchone()
    assert total == distinct == 81 * 12


def _descendants(root: int) -> set[int]:
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _worker_with_rank(launcher_pid: int, rank: str) -> int | None:
    """The descendant of the launcher whose environment says RANK=rank."""
    for _ in range(100):
        for pid in _descendants(launcher_pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.1)
    return None
