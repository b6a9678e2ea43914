"""Commands run as real child processes: start, wait (bounded: a wait that runs out fails the test as a hang), inspect
the score store and the written model. Every process group a test started is killed at teardown if it was left running."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import scoring_recipe
from safetensors.torch import load_file

RUN_TIMEOUT_S = 300


@pytest.fixture
def spawn(tmp_path_factory):
    """Popen in a new session (so it and its children can be killed as a group); all killed at teardown.

    TMPDIR points into pytest's temporary folder, so the children's own temporary folders do not pile up in /tmp.
    """
    started: list[subprocess.Popen] = []
    tmpdir = str(tmp_path_factory.mktemp("spawn-tmp"))

    def start(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": tmpdir, **(env or {})},
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.killpg(pid, signal.SIGKILL)  # a child may have started a session of its own
            except (ProcessLookupError, PermissionError):
                pass
        proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(proc.args[:3])} … did not finish within {timeout} s (hang)")
    return proc.returncode, out, err


def rows(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        found = {(s, f, t, d): (v, c, p) for s, f, t, d, v, c, p in con.execute("SELECT * FROM scores")}
        assert len(found) == con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]  # no example stored twice
    return found


def units(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return {(s, f): (spec, t) for s, f, spec, t in con.execute("SELECT subject, fold, spec, finished FROM units")}


def stored_units(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_for_units(proc: subprocess.Popen, db: Path, count: int, timeout: float = RUN_TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = stored_units(db) if db.exists() else 0
        if done >= count:
            return done
        time.sleep(0.05)
    said = proc.communicate()[1][-2000:] if proc.poll() is not None else ""
    pytest.fail(f"the run stored fewer than {count} units (exit code {proc.poll()}) {said}")


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


def full_recipe(base: Path, tasks: Path, out: Path, seed: int) -> dict:
    """Racing, a gate with fallback and several probe multipliers, stage 2, held-out evaluation with a vote."""
    data = scoring_recipe(
        base,
        tasks,
        out,
        population={"size": 12, "sigmas": [0.05, 0.2], "seed": seed},
        parameters={"quantile": [0.25, 0.5], "beta": [1, 10], "alpha": [1]},
        iterate={"rounds": 2, "local_size": 6, "rank": 2},
        evaluate={"ensemble_k": [3]},
    )
    data["gate"].update(z=0.0, regression_penalty=0.0, fallback=True, probe_multipliers=[0.25, 0.5, 1.0, 2.0, 4.0])
    data["noise"] = "sfc64-zig-b64k-v1"  # the cases below (accepted with stage 2 / abstaining) were chosen on these draws
    return data


DECISIONS = (
    "gate",
    "candidates",
    "candidates_tried",
    "racing",
    "stage2",
    "base",
    "chosen",
    "population",
    "folds",
    "evaluation",
    "evaluations",
    "example_evaluations",
)


def report_of(out: Path) -> dict:
    path = out / "report.json" if (out / "report.json").exists() else Path(f"{out}.work") / "report.json"
    return json.loads(path.read_text())


def tensors(out: Path) -> dict[str, tuple[str, tuple, bytes]]:
    found = {}
    for file in sorted(out.glob("*.safetensors")):
        for name, t in load_file(file).items():
            found[name] = (str(t.dtype), tuple(t.shape), t.contiguous().numpy().tobytes())
    return found
