"""Scale-out on a real Ray cluster started on this machine: two nodes (one CPU each), the driver joins through RAY_ADDRESS.

One cluster serves the module's tests (Ray's start-up takes seconds); each run creates its own actors and kills them
at its end, so the tests stay independent.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, scoring_recipe, write_recipe
from test_distributed import DECISIONS, finish, full_recipe, report_of, rows, spawn, stored_units, tensors, units, wait_for_units  # noqa: F401

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

RUN_S = 300


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each, small object stores, no dashboard."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False})
    nodes.add_node(num_cpus=1, object_store_memory=80 << 20)
    nodes.wait_for_nodes()
    yield nodes.address
    nodes.shutdown()


def with_workers(data: dict, workers: int, **scoring) -> dict:
    data["scoring"].update(workers=workers, **scoring)
    return data


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this test process, which started the cluster (another xdist worker has its own)."""
    me = os.getpid()
    while pid > 1:
        pid = _parent(pid)
        if pid == me:
            return True
    return False


def actor_pids(busy: bool = False) -> list[int]:
    """Processes of corpmerge's Ray workers in this test process's cluster (Ray titles them ray::ScoringWorker[.method])."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::ScoringWorker") and (not busy or ".evaluate" in title) and _ours(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_for(predicate, what: str, timeout: float = RUN_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_two_workers_on_two_nodes_score_decide_and_write_what_one_process_does(tmp_path, tiny_untied, tiny_task, cluster, spawn):
    one = write_recipe(tmp_path, full_recipe(tiny_untied, tiny_task, tmp_path / "one", 5), "one.yaml")
    many = write_recipe(tmp_path, with_workers(full_recipe(tiny_untied, tiny_task, tmp_path / "many", 5), 2), "many.yaml")
    assert run_cli("-q", "run", str(one)).returncode == 0
    code, _, err = finish(spawn([sys.executable, "-m", "corpmerge", "-q", "run", str(many)], env={"RAY_ADDRESS": cluster}), RUN_S)
    assert code == 0, err[-3000:]
    db_one, db_many = tmp_path / "one.work" / "scores.sqlite", tmp_path / "many.work" / "scores.sqlite"
    assert rows(db_many) == rows(db_one)  # every per-example score bit-identical, nothing lost or doubled
    assert {k: spec for k, (spec, _) in units(db_many).items()} == {k: spec for k, (spec, _) in units(db_one).items()}
    assert {k: report_of(tmp_path / "one").get(k) for k in DECISIONS} == {k: report_of(tmp_path / "many").get(k) for k in DECISIONS}
    assert tensors(tmp_path / "many") == tensors(tmp_path / "one") != {}  # the written model, byte for byte
    log = (tmp_path / "many.work" / "corpmerge.log").read_text()
    assert "2 Ray workers ready" in log
    assert sum(int(n) for n in __import__("re").findall(r"worker \d: (\d+) units", log)) > 0  # the workers evaluated (how many each: timing)
    assert not actor_pids()  # the run's actors are gone


def score_recipe(tmp_path: Path, tiny_model: Path, tiny_task: Path, name: str, workers: int, **scoring) -> tuple[Path, Path]:
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / name, population={"size": 24, "sigmas": [0.02, 0.05], "seed": 5})
    data["scoring"]["racing"] = {"enabled": False}
    data["scoring"]["batch_size"] = 1  # slower units, so a fault lands mid-unit
    return write_recipe(tmp_path, with_workers(data, workers, **scoring), f"{name}.yaml"), tmp_path / f"{name}.work" / "scores.sqlite"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, tiny_task):
    """The scores of a 0-worker run of ``score_recipe``."""
    folder = tmp_path_factory.mktemp("reference")
    recipe, db = score_recipe(folder, tiny_model, tiny_task, "ref", 0)
    assert run_cli("-q", "score", str(recipe)).returncode == 0
    return rows(db)


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_a_killed_or_stopped_worker_loses_no_unit_and_is_restarted(fault, tmp_path, tiny_model, tiny_task, cluster, spawn, reference):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "run", 2, unit_timeout=60.0 if fault == "SIGKILL" else 8.0)
    proc = spawn([sys.executable, "-m", "corpmerge", "score", str(recipe)], env={"RAY_ADDRESS": cluster})
    wait_for_units(proc, db, 1)
    os.kill(proc.pid, signal.SIGSTOP)  # the driver holds still while both workers are frozen, so the run cannot end first
    try:
        victim, other = wait_for(lambda: actor_pids() if len(actor_pids()) == 2 else [], "both workers", timeout=30)
        for pid in (victim, other):
            os.kill(pid, signal.SIGSTOP)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    time.sleep(2)  # the driver hands each frozen worker a unit (if it did not hold one already): the victim dies holding one
    if fault == "SIGKILL":
        os.kill(victim, signal.SIGKILL)
    os.kill(other, signal.SIGCONT)
    code, out, err = finish(proc, RUN_S)
    assert code == 0, err[-3000:]
    assert rows(db) == reference  # every unit, once, with the bits of a one-process run
    said = "died (" if fault == "SIGKILL" else "stalled: no answer for"
    assert said in err and said in (tmp_path / "run.work" / "corpmerge.log").read_text()  # one line on screen, and in the log


def test_every_worker_gone_stops_in_one_line_and_the_same_command_resumes(tmp_path, tiny_model, tiny_task, cluster, spawn, reference):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "run", 1, worker_restarts=0, unit_timeout=60.0)
    recipe.write_text(recipe.read_text())
    proc = spawn([sys.executable, "-m", "corpmerge", "score", str(recipe)], env={"RAY_ADDRESS": cluster})
    wait_for_units(proc, db, 1)
    os.kill(proc.pid, signal.SIGSTOP)  # held still, so the run cannot end before the worker is found
    try:
        os.kill(wait_for(actor_pids, "a worker", timeout=30)[0], signal.SIGKILL)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    code, _, err = finish(proc, RUN_S)
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 0:  # the driver finished the rest itself before noticing: nothing to resume
        assert rows(db) == reference
        return
    assert code == 2 and lines[-1].startswith("error: scoring.workers: every worker is gone"), err[-2000:]
    done = units(db)
    again = run_cli("-q", "score", str(recipe), env={"RAY_ADDRESS": cluster})
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows(db) == reference and all(units(db)[k] == v for k, v in done.items())  # finished units were not scored again


def test_a_killed_driver_resumes_without_rescoring(tmp_path, tiny_model, tiny_task, cluster, spawn, reference):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "run", 2)
    proc = spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], env={"RAY_ADDRESS": cluster})
    wait_for_units(proc, db, 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = units(db)
    wait_for(lambda: not actor_pids(), "the dead driver's workers to go", timeout=60)  # Ray ends a dead driver's actors
    again = run_cli("-q", "score", str(recipe), env={"RAY_ADDRESS": cluster})
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows(db) == reference
    assert all(units(db)[k] == v for k, v in done.items())  # same finish times: nothing finished was scored again


def test_workers_the_cluster_cannot_place_or_a_negative_count_are_one_line(tmp_path, tiny_model, tiny_task, cluster):
    recipe, _ = score_recipe(tmp_path, tiny_model, tiny_task, "big", 5)
    result = run_cli("score", str(recipe), env={"RAY_ADDRESS": cluster})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: scoring.workers: 5 workers need 5 CPU, and the Ray cluster has 0 GPU, 2 CPU; use at most 2")
    recipe, _ = score_recipe(tmp_path, tiny_model, tiny_task, "negative", -1)
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2 and "scoring.workers" in result.stderr and result.stderr.count("\n") == 1
