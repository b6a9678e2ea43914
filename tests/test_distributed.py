"""Runs spread over real processes (gloo on CPU, 127.0.0.1): accelerate launch, torchrun, or plain RANK/WORLD_SIZE.

Every launched process group is started in its own session and killed at teardown if a test
left it running; waits are bounded, and a wait that runs out fails the test as a hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, scoring_recipe, write_recipe
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(kind: str, processes: int, args: list[str], extra: list[str] | None = None) -> list[str]:
    if kind == "accelerate":
        return [
            str(BIN / "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            *(extra or []),
            "-m",
            "corpmerge",
            *args,
        ]
    assert kind == "torchrun"
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes), *(extra or []), "-m", "corpmerge", *args]


@pytest.fixture
def spawn(tmp_path_factory):
    """Popen in a new session (so the launcher and its ranks can be killed as a group); all killed at teardown.

    TMPDIR points into pytest's temporary folder, so the launchers' own temporary folders do not pile up in /tmp.
    """
    started: list[subprocess.Popen] = []
    tmpdir = str(tmp_path_factory.mktemp("launcher-tmp"))

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
                os.killpg(pid, signal.SIGKILL)  # torchrun's ranks run in sessions of their own
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
    pytest.fail(f"the run stored fewer than {count} units (exit code {proc.poll()})")


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


def ranks(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the launcher's descendants whose environment sets RANK."""
    found = {}
    for pid in _descendants(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None and rank.isdigit():
            found.setdefault(int(rank), pid)
    return found


def open_files(pid: int) -> set[str]:
    files = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                files.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        pass
    return files


def close_lines(log: str) -> dict[int, tuple[int, int]]:
    """{rank: (units, examples)} from rank 0's last per-rank summary in a run log."""
    found = {}
    for rank, n_units, examples in re.findall(r"INFO rank (\d+): (\d+) units, (\d+) examples", log):
        found[int(rank)] = (int(n_units), int(examples))
    return found


# --- one process vs many: the same scores, decisions and written model ---------------------------


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


@pytest.mark.parametrize(
    "case, processes, kind",
    [("accepted", 2, "accelerate"), ("abstained", 3, "torchrun")],
)
def test_run_on_many_processes_matches_one_and_only_rank_0_opens_the_store(
    case,
    processes,
    kind,
    tmp_path,
    tiny_model,
    tiny_untied,
    tiny_task,
    spawn,
):
    # the untied tiny model with population seed 5 passes the gate and stage 2 accepts rounds;
    # the tied one with seed 7 has racing stop entries, probes two candidates (fallback) and abstains
    base, seed = (tiny_untied, 5) if case == "accepted" else (tiny_model, 7)
    one = write_recipe(tmp_path, full_recipe(base, tiny_task, tmp_path / "one", seed), "one.yaml")
    many = write_recipe(tmp_path, full_recipe(base, tiny_task, tmp_path / "many", seed), "many.yaml")
    single = run_cli("-q", "run", str(one))
    assert single.returncode == 0, single.stderr[-3000:]

    proc = spawn(launcher(kind, processes, ["-q", "run", str(many)]))
    store = tmp_path / "many.work" / "scores.sqlite"
    seen: dict[int, set[str]] = {}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None:  # which rank has which file open, sampled during the whole run
        if time.monotonic() > deadline:
            pytest.fail(f"the launched run did not finish within {RUN_TIMEOUT_S} s (hang)")
        pids = ranks(proc.pid)
        if len(pids) == processes:
            for rank, pid in pids.items():
                seen.setdefault(rank, set()).update(open_files(pid))
        time.sleep(0.05)
    code, _, err = finish(proc)
    assert code == 0, err[-3000:]

    store_files = {str(store), f"{store}-wal", f"{store}-shm"}
    assert store_files & seen[0], "rank 0 was never seen with the store open"
    for rank in range(1, processes):
        assert not store_files & seen[rank], f"rank {rank} opened the store"
        assert not any(f.endswith((".sqlite", ".sqlite-wal", ".sqlite-shm")) for f in seen[rank])

    db_one = tmp_path / "one.work" / "scores.sqlite"
    assert rows(store) == rows(db_one)  # every per-example score bit-identical, nothing lost or doubled
    assert {k: spec for k, (spec, _) in units(store).items()} == {k: spec for k, (spec, _) in units(db_one).items()}
    report_one, report_many = report_of(tmp_path / "one"), report_of(tmp_path / "many")
    assert {k: report_one.get(k) for k in DECISIONS} == {k: report_many.get(k) for k in DECISIONS}
    if case == "accepted":
        assert report_many["gate"]["accepted"] and report_many["gate"]["multiplier"] == 4.0
        assert len(report_many["stage2"]["rounds"]) == 2 and report_many["stage2"]["accepted"] >= 1
        assert tensors(tmp_path / "many") == tensors(tmp_path / "one") != {}  # the written model, byte for byte
    else:
        assert not report_many["gate"]["accepted"] and report_many["gate"]["candidates_probed"] == 2
        assert report_many["racing"]["stopped"] > 0
        assert not (tmp_path / "many").exists() and not (tmp_path / "one").exists()
    spread = close_lines((tmp_path / "many.work" / "corpmerge.log").read_text())
    assert sorted(spread) == list(range(processes)) and all(n > 0 for n, _ in spread.values())  # every rank evaluated


# --- faults --------------------------------------------------------------------------------------


def score_recipe(tmp_path: Path, tiny_model: Path, tiny_task: Path, name: str, size: int) -> tuple[Path, Path]:
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / name, population={"size": size, "sigmas": [0.02, 0.05], "seed": 5})
    return write_recipe(tmp_path, data, f"{name}.yaml"), tmp_path / f"{name}.work" / "scores.sqlite"


def rewards(recipe: Path) -> list:
    folder = Path(yaml.safe_load(recipe.read_text())["output"]["path"] + ".work")
    return yaml.safe_load((folder / "rewards.yaml").read_text())["population"]


def test_killed_worker_stops_the_launch_and_a_relaunch_with_another_count_scores_nothing_twice(tmp_path, tiny_model, tiny_task, spawn):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "killed", 48)
    proc = spawn(launcher("accelerate", 2, ["-q", "score", str(recipe)]))
    wait_for_units(proc, db, 6)
    worker = ranks(proc.pid).get(1)
    assert worker is not None, "the launched rank 1 was not found"
    os.kill(worker, signal.SIGKILL)
    code, _, _ = finish(proc, 120)  # rank 0 must not wait forever for the dead worker
    assert code != 0
    rows_before, units_before = rows(db), units(db)
    assert 6 <= len(units_before) < 49

    log = tmp_path / "killed.work" / "corpmerge.log"
    offset = log.stat().st_size
    proc = spawn(launcher("accelerate", 3, ["-q", "score", str(recipe)]))  # relaunch with 3 processes
    code, _, err = finish(proc)
    assert code == 0, err[-3000:]
    rows_after, units_after = rows(db), units(db)
    assert {k: rows_after[k] for k in rows_before} == rows_before  # finished scores untouched
    assert {k: units_after[k] for k in units_before} == units_before  # finished units untouched (same timestamps)
    spread = close_lines(log.read_text()[offset:])
    assert sorted(spread) == [0, 1, 2]
    assert sum(e for _, e in spread.values()) == len(rows_after) - len(rows_before)  # only the missing examples evaluated
    assert len(rewards(recipe)) == 48

    reference, ref_db = score_recipe(tmp_path, tiny_model, tiny_task, "reference", 48)
    assert run_cli("-q", "score", str(reference)).returncode == 0
    assert rows(db) == rows(ref_db)  # the same scores as an uninterrupted run
    assert rewards(recipe) == rewards(reference)


def test_without_a_launcher_rank_0_notices_a_killed_worker_and_stops_in_one_line(tmp_path, tiny_model, tiny_task, spawn):
    """No agent to stop rank 0: it must see the closed connection itself, not wait forever."""
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "bare", 48)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    main, worker = (spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2))
    wait_for_units(main, db, 6)
    os.kill(worker.pid, signal.SIGKILL)
    code, _, err = finish(main, 120)
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("error:")]) == 1, err[-3000:]
    assert lines[-1].startswith("error: rank 1 stopped while evaluating entry:"), err[-3000:]
    assert "run the same command again to continue" in lines[-1]
    finish(worker, 10)

    before = rows(db)
    result = run_cli("-q", "score", str(recipe))  # one process finishes the job
    assert result.returncode == 0, result.stderr[-3000:]
    after = rows(db)
    assert {k: after[k] for k in before} == before and len(rewards(recipe)) == 48


def test_a_worker_stopped_mid_run_is_noticed_and_the_command_returns_in_one_line(tmp_path, tiny_model, tiny_task, spawn):
    """SIGSTOP: the worker neither dies nor answers. Rank 0 gives its unit back, sees every worker stalled,
    stops in one line and kills the stopped worker (the command must not hang); the next run resumes."""
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "stopped", 48)
    data = yaml.safe_load(recipe.read_text())
    data["scoring"]["unit_timeout"] = 10
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    main, worker = (spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2))
    wait_for_units(main, db, 6)
    os.kill(worker.pid, signal.SIGSTOP)
    code, _, err = finish(main, 180)
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: every worker stalled: rank 1 (no answer for "), err[-3000:]
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert finish(worker, 30)[0] == -signal.SIGKILL  # rank 0 ended it: a launcher would otherwise wait forever
    log = (tmp_path / "stopped.work" / "corpmerge.log").read_text()
    assert "rank 1 stalled: no answer for " in log and "rank 1 (pid " in log

    before = rows(db)
    result = run_cli("-q", "score", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    after = rows(db)
    assert {k: after[k] for k in before} == before and len(rewards(recipe)) == 48


def test_torchrun_max_restarts_relaunches_after_a_killed_worker_and_resumes_from_the_store(tmp_path, tiny_model, tiny_task, spawn):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "elastic", 48)
    proc = spawn(launcher("torchrun", 2, ["-q", "score", str(recipe)], ["--max-restarts", "1"]))
    wait_for_units(proc, db, 6)
    first = ranks(proc.pid)
    assert set(first) == {0, 1}
    stored = len(rows(db))  # at least this much is in the store when the first attempt ends
    os.kill(first[1], signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == 0, err[-3000:]  # the agent restarted both ranks once, and the second attempt finished
    log = (tmp_path / "elastic.work" / "corpmerge.log").read_text()
    assert log.count("INFO loading base") == 2  # two attempts
    second = close_lines(log.rsplit("INFO loading base", 1)[1])
    total = rows(db)
    assert sorted(second) == [0, 1]
    assert 0 < sum(e for _, e in second.values()) <= len(total) - stored  # resumed: nothing stored before the kill was redone
    assert len(rewards(recipe)) == 48


def test_a_worker_that_cannot_load_the_model_stops_every_rank_in_one_line(tmp_path, tiny_model, tiny_task, spawn):
    """Rank 1 runs where the base is an incomplete copy (as on a node whose download broke off)."""
    data = scoring_recipe(Path("base"), tiny_task, tmp_path / "out")  # relative: each rank reads ./base from its folder
    recipe = write_recipe(tmp_path, data)
    good, broken = tmp_path / "node0", tmp_path / "node1"
    shutil.copytree(tiny_model, good / "base")
    shutil.copytree(tiny_model, broken / "base")
    weights = broken / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    procs = [
        spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], {**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=cwd)
        for r, cwd in enumerate((good, broken))
    ]
    results = [finish(p, 120) for p in procs]
    for code, _, err in results:
        assert code == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: rank 1 could not start: "), err[-3000:]
    assert results[0][2] == results[1][2]  # the same line on every rank
    assert not (tmp_path / "out.work" / "scores.sqlite").exists() or not rows(tmp_path / "out.work" / "scores.sqlite")
