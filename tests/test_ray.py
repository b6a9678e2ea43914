"""Scale-out on a real Ray cluster started on this machine: two nodes (one CPU each), the driver joins through RAY_ADDRESS.

One cluster serves the module's tests (Ray's start-up takes seconds); each run creates its own actors and kills them
at its end, so the tests stay independent.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, scoring_recipe, write_recipe
from runs import DECISIONS, finish, full_recipe, report_of, rows, spawn, stored_units, tensors, units, wait_for_units  # noqa: F401

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


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def freeze_a_busy_worker(proc, timeout: float = RUN_S) -> int:
    """SIGSTOP a worker in the middle of a unit (Ray titles it ``ray::ScoringWorker.evaluate`` meanwhile) and return its pid.

    A worker caught between units is let go again: a worker killed while idle is restarted by Ray before its next unit,
    silently, and a stopped idle one may get no unit before the run ends; frozen mid-unit, the run waits for its unit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in actor_pids(busy=True):
            os.kill(pid, signal.SIGSTOP)
            if ".evaluate" in _title(pid):
                return pid
            os.kill(pid, signal.SIGCONT)  # it finished the unit between the look and the stop
        time.sleep(0.005)
    pytest.fail(f"no worker was caught in the middle of a unit (the run's exit code: {proc.poll()})")


def wait_for(predicate, what: str, timeout: float = RUN_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("case", ["accepted", "abstained"])
def test_two_workers_on_two_nodes_score_decide_and_write_what_one_process_does(case, tmp_path, tiny_model, tiny_untied, tiny_task, cluster, spawn):
    # the untied tiny model with population seed 5 passes the gate and stage 2 accepts rounds;
    # the tied one with seed 7 has racing stop entries, probes two candidates (fallback) and abstains
    base, seed = (tiny_untied, 5) if case == "accepted" else (tiny_model, 7)
    one = write_recipe(tmp_path, full_recipe(base, tiny_task, tmp_path / "one", seed), "one.yaml")
    many = write_recipe(tmp_path, with_workers(full_recipe(base, tiny_task, tmp_path / "many", seed), 2), "many.yaml")
    single = run_cli("-q", "run", str(one))
    assert single.returncode == 0, single.stderr[-3000:]
    code, _, err = finish(spawn([sys.executable, "-m", "corpmerge", "-q", "run", str(many)], env={"RAY_ADDRESS": cluster}), RUN_S)
    assert code == 0, err[-3000:]
    db_one, db_many = tmp_path / "one.work" / "scores.sqlite", tmp_path / "many.work" / "scores.sqlite"
    assert rows(db_many) == rows(db_one)  # every per-example score bit-identical, nothing lost or doubled
    assert {k: spec for k, (spec, _) in units(db_many).items()} == {k: spec for k, (spec, _) in units(db_one).items()}
    report = report_of(tmp_path / "many")
    assert {k: report_of(tmp_path / "one").get(k) for k in DECISIONS} == {k: report.get(k) for k in DECISIONS}
    if case == "accepted":
        assert report["gate"]["accepted"] and report["gate"]["multiplier"] == 4.0
        assert len(report["stage2"]["rounds"]) == 2 and report["stage2"]["accepted"] >= 1
        assert tensors(tmp_path / "many") == tensors(tmp_path / "one") != {}  # the written model, byte for byte
    else:
        assert not report["gate"]["accepted"] and report["gate"]["candidates_probed"] == 2
        assert report["racing"]["stopped"] > 0
        assert not (tmp_path / "many").exists() and not (tmp_path / "one").exists()
    log = (tmp_path / "many.work" / "corpmerge.log").read_text()
    assert "2 Ray workers ready" in log
    assert sum(int(n) for n in __import__("re").findall(r"worker \d: (\d+) units", log)) > 0  # the workers evaluated (how many each: timing)
    wait_for(lambda: not actor_pids(), "the run's actors to go", timeout=60)


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
    # a killed worker must be noticed as dead, not as stalled: a deadline far beyond a unit's time, even on a loaded machine
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "run", 2, unit_timeout=RUN_S if fault == "SIGKILL" else 8.0)
    proc = spawn([sys.executable, "-m", "corpmerge", "score", str(recipe)], env={"RAY_ADDRESS": cluster})
    wait_for_units(proc, db, 1)
    victim = freeze_a_busy_worker(proc)
    if fault == "SIGKILL":
        os.kill(victim, signal.SIGKILL)
    code, out, err = finish(proc, RUN_S)
    assert code == 0, err[-3000:]
    assert rows(db) == reference  # every unit, once, with the bits of a one-process run
    said = "died (" if fault == "SIGKILL" else "stalled: no answer for"
    assert said in err and said in (tmp_path / "run.work" / "corpmerge.log").read_text()  # one line on screen, and in the log


def test_every_worker_gone_stops_in_one_line_and_the_same_command_resumes(tmp_path, tiny_model, tiny_task, cluster, spawn, reference):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "run", 1, worker_restarts=0, unit_timeout=RUN_S)
    proc = spawn([sys.executable, "-m", "corpmerge", "score", str(recipe)], env={"RAY_ADDRESS": cluster})
    wait_for_units(proc, db, 1)
    os.kill(freeze_a_busy_worker(proc), signal.SIGKILL)
    code, _, err = finish(proc, RUN_S)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: scoring.workers: every worker is gone"), err[-2000:]
    done = units(db)
    again = run_cli("-q", "score", str(recipe), env={"RAY_ADDRESS": cluster})
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows(db) == reference and all(units(db)[k] == v for k, v in done.items())  # finished units were not scored again


def test_a_killed_driver_resumes_with_another_worker_count_without_rescoring(tmp_path, tiny_model, tiny_task, cluster, spawn, reference):
    recipe, db = score_recipe(tmp_path, tiny_model, tiny_task, "run", 2)
    proc = spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], env={"RAY_ADDRESS": cluster})
    wait_for_units(proc, db, 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = units(db)
    wait_for(lambda: not actor_pids(), "the dead driver's workers to go", timeout=60)  # Ray ends a dead driver's actors
    recipe.write_text(recipe.read_text().replace("workers: 2", "workers: 1"))  # resumed with another number of workers
    again = run_cli("-q", "score", str(recipe), env={"RAY_ADDRESS": cluster})
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows(db) == reference
    assert all(units(db)[k] == v for k, v in done.items())  # same finish times: nothing finished was scored again
    resumed = (tmp_path / "run.work" / "corpmerge.log").read_text().rsplit("INFO loading base", 1)[1]
    assert "1 Ray workers ready" in resumed
    evaluated = sum(int(n) for n in __import__("re").findall(r"(?:worker \d|driver): (\d+) units", resumed))
    assert evaluated == len(units(db)) - len(done)  # only what was missing


def test_workers_the_cluster_cannot_place_or_a_negative_count_are_one_line(tmp_path, tiny_model, tiny_task, cluster):
    recipe, _ = score_recipe(tmp_path, tiny_model, tiny_task, "big", 5)
    result = run_cli("score", str(recipe), env={"RAY_ADDRESS": cluster})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: scoring.workers: 5 workers need 5 CPU, and the Ray cluster has 0 GPU, 2 CPU; use at most 2")
    recipe, _ = score_recipe(tmp_path, tiny_model, tiny_task, "negative", -1)
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2 and "scoring.workers" in result.stderr and result.stderr.count("\n") == 1


def test_a_worker_that_cannot_load_the_base_stops_the_run_in_one_line(tmp_path, tiny_model, tiny_task, cluster, spawn):
    """The base is a Hub id in the driver's Hugging Face cache, and not in the cache the workers see (a node without it)."""
    cache = tmp_path / "hf"
    snapshot = cache / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model, snapshot)
    (cache / "hub" / "models--org--tiny" / "refs").mkdir()
    (cache / "hub" / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    data = with_workers(scoring_recipe(Path("base"), tiny_task, tmp_path / "out"), 1)
    data["base_model"] = "org/tiny"
    recipe = write_recipe(tmp_path, data)
    one = run_cli(
        "-q",
        "score",
        str(write_recipe(tmp_path, {**data, "scoring": {**data["scoring"], "workers": 0}}, "one.yaml")),
        env={"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    assert one.returncode == 0, one.stderr[-2000:]  # the driver alone can load it
    code, _, err = finish(spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], env={"RAY_ADDRESS": cluster, "HF_HOME": str(cache)}), RUN_S)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: scoring.workers: worker 1 could not start (base_model: 'org/tiny'"), lines[0]
    wait_for(lambda: not actor_pids(), "the run's actors to go", timeout=60)


FAULTY = """
def process_results(doc, results):
    if open("/proc/self/cmdline", "rb").read().startswith(b"ray::"):
        raise RuntimeError("planted fault: this task fails inside a Ray worker")
    scores = [ll for ll, _ in results]
    return {"acc": float(scores.index(max(scores)) == doc["answer"])}
"""


def test_a_unit_that_fails_inside_a_worker_stops_the_run_in_one_line_and_keeps_finished_units(tmp_path, tiny_model, tiny_task, cluster, spawn):
    tasks = tmp_path / "tasks"
    shutil.copytree(tiny_task, tasks)
    (tasks / "faults.py").write_text(FAULTY)
    (tasks / "tiny_mc.yaml").write_text((tasks / "tiny_mc.yaml").read_text() + "process_results: !function faults.process_results\n")
    recipe, db = score_recipe(tmp_path, tiny_model, tasks, "run", 1)
    code, _, err = finish(spawn([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], env={"RAY_ADDRESS": cluster}), RUN_S)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: worker 1 failed on ") and "planted fault: this task fails inside a Ray worker" in lines[0], lines[0]
    assert "Traceback" in (tmp_path / "run.work" / "corpmerge.log").read_text()  # the traceback went to the log
    wait_for(lambda: not actor_pids(), "the run's actors to go", timeout=60)
    done = units(db)
    recipe.write_text(recipe.read_text().replace("workers: 1", "workers: 0"))  # in the driver alone the task works
    again = run_cli("-q", "score", str(recipe))
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(units(db)[k] == v for k, v in done.items())  # what the driver finished before the stop was kept


def test_copies_started_by_a_launcher_are_refused_in_one_line(tmp_path, tiny_model, tiny_task):
    recipe, _ = score_recipe(tmp_path, tiny_model, tiny_task, "launched", 0)
    result = run_cli("score", str(recipe), env={"WORLD_SIZE": "2", "RANK": "1"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: WORLD_SIZE: this process is one of several started by a launcher") and "scoring.workers" in result.stderr
