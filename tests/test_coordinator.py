"""The coordinator itself, with real processes (gloo on 127.0.0.1) and a real SQLite store.

A stand-in scorer sleeps in proportion to a unit's examples times its rank's slowness, so unit
costs are uneven and known. Assertions are about what was dealt to whom and what the store holds,
computed from those known costs, never about wall-clock times. This file is also the child
program: ``python tests/test_coordinator.py config.json`` with RANK and WORLD_SIZE set.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD_TIMEOUT_S = 120


# --- the child program ----------------------------------------------------------------------------


class SleepyScorer:
    """Stands in for ``Scorer``: sleeps examples × example_s × this rank's slowness, returns made-up scores
    (whose prediction names the rank that computed them)."""

    def __init__(self, rank: int, cfg: dict):
        self.rank, self.cfg = rank, cfg
        self.slowness = float(cfg.get("slowness", {}).get(str(rank), 1.0))
        self.evaluations = self.examples_evaluated = 0
        self.seen = 0
        self.subjects: list[str] = []

    def evaluate(self, update, docs, suite=None):
        from corpmerge.scoring.lmeval import ExampleScore

        self.seen += 1
        if self.cfg.get("die_after", {}).get(str(self.rank)) == self.seen - 1:
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dying with a unit in flight
        if self.cfg.get("stall_after", {}).get(str(self.rank)) == self.seen - 1:
            os.kill(os.getpid(), signal.SIGSTOP)  # a worker that stops responding without dying (a GPU hang)
        if self.cfg.get("fail_after", {}).get(str(self.rank)) == self.seen - 1:
            raise ValueError(f"cannot evaluate this unit on rank {self.rank}\nsecond line")
        late = self.cfg.get("late_once", {}).get(str(self.rank))
        if late and late[0] == self.seen - 1:
            time.sleep(late[1])  # far past its deadline, then it answers
        n = sum(len(ids) for ids in docs.values())
        time.sleep(n * self.cfg["example_s"] * self.slowness)
        self.evaluations += 1
        self.examples_evaluated += n
        self.subjects.append(next(iter(update)) if update else "")
        return {(task, d): ExampleScore(float(d % 3) / 2, d % 3 == 2, f"rank{self.rank}") for task, ids in docs.items() for d in ids}


def child(config: Path) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    cfg = json.loads(config.read_text())
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank, world_size=size, timeout=timedelta(seconds=CHILD_TIMEOUT_S))
    try:
        _child(cfg, config, rank, size)
    finally:
        dist.destroy_process_group()  # as corpmerge does at exit (current_world registers it)


def _child(cfg: dict, config: Path, rank: int, size: int) -> None:
    from corpmerge.errors import CorpmergeError
    from corpmerge.scoring import coordinator as coordination
    from corpmerge.scoring.coordinator import Coordinator, Deadlines, agree_on_startup, serve
    from corpmerge.scoring.evaluator import Request
    from corpmerge.scoring.store import ScoreStore

    out: dict = {"rank": rank}
    result = config.with_name(f"{config.stem}.rank{rank}.json")
    if rank == 0 and cfg.get("log"):  # as the CLI's corpmerge.log
        logging.getLogger("corpmerge").addHandler(logging.FileHandler(cfg["log"]))
    try:
        agree_on_startup(cfg.get("problems", {}).get(str(rank)), size)
    except CorpmergeError as exc:
        result.write_text(json.dumps({**out, "startup_error": str(exc)}))
        return
    scorer = SleepyScorer(rank, cfg)
    if rank > 0:
        serve(scorer, lambda key: None)
        result.write_text(json.dumps({**out, "served": scorer.evaluations, "subjects": scorer.subjects}))
        return
    store = ScoreStore(cfg["store"], {"test": "coordinator"})
    deadlines = Deadlines(cfg.get("stall_factor", 10.0), cfg.get("unit_timeout", 600.0))
    coordinator = Coordinator(scorer, store, lambda key: None, size, deadlines)
    requests = [Request(subject, "A", {"t": list(range(n))}, {subject: 1.0}) for subject, n in cfg["units"]]
    try:
        coordinator.run(requests, "uneven units")
    except CorpmergeError as exc:
        out["error"] = str(exc)
    finally:
        if "stop_before_close" in cfg:  # a worker that stops responding while idle, after the last unit
            os.kill(coordination._peers[cfg["stop_before_close"]].pid, signal.SIGSTOP)
        coordinator.close()
        store.close()
    out.update(
        history=coordinator.history,
        units_done=coordinator.units_done,
        busy_s=coordinator.busy_s,
        batch_s=coordinator.batch_s,
        evaluations=scorer.evaluations,
        examples_evaluated=scorer.examples_evaluated,
        stalls=coordinator.stalls,
        late=coordinator.late,
    )
    result.write_text(json.dumps(out))


# --- the harness ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def launch(tmp_path):
    """Start ``size`` child processes (each its own process group), wait for them; kill any left at teardown."""
    started: list[subprocess.Popen] = []

    def run(name: str, size: int, **cfg) -> tuple[list[int], list[dict]]:
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({"port": free_port(), "store": str(tmp_path / "scores.sqlite"), "example_s": 0.01, **cfg}))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(size)}
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, str(config)],
                env={**env, "RANK": str(r)},
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(size)
        ]
        started.extend(procs)
        codes, errors = [], []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name}: a process did not finish within {CHILD_TIMEOUT_S} s (hang)")
            codes.append(proc.returncode)
            errors.append(err)
        outputs = []
        for r in range(size):
            path = config.with_name(f"{name}.rank{r}.json")
            outputs.append({**(json.loads(path.read_text()) if path.exists() else {}), "stderr": errors[r][-3000:]})
        return codes, outputs

    yield run
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def uneven_units(count: int, seed: int = 0) -> list[list]:
    rng = random.Random(seed)
    return [[f"unit-{i:02d}", rng.randint(1, 10)] for i in range(count)]


def store_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        total, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject || ':' || doc_id) FROM scores").fetchone()
        assert total == distinct  # no example stored twice
        return dict(con.execute("SELECT subject, COUNT(*) FROM scores GROUP BY subject"))


def loads(dealt: dict[int, list[int]], slowness: dict[int, float]) -> dict[int, float]:
    """Each rank's busy time in example units: the examples it evaluated times its slowness."""
    return {rank: slowness[rank] * sum(costs) for rank, costs in dealt.items()}


def idle(per_rank: dict[int, float]) -> float:
    """Total idle time of a deal: every rank waits for the busiest one."""
    end = max(per_rank.values())
    return sum(end - busy for busy in per_rank.values())


# --- the tests ------------------------------------------------------------------------------------


def test_free_processes_take_the_next_unit_so_uneven_costs_balance(launch, tmp_path):
    units = uneven_units(30)
    slowness = {0: 1.0, 1: 1.0, 2: 4.0}  # rank 2 is four times slower (an older GPU, a busier node)
    codes, (main, *workers) = launch("balance", 3, units=units, slowness={str(k): v for k, v in slowness.items()})
    assert codes == [0, 0, 0], [w.get("stderr") for w in workers]
    assert "error" not in main
    history = main["history"]
    assert sorted(subject for _, subject, *_ in history) == [s for s, _ in units]  # every unit exactly once
    assert store_rows(tmp_path / "scores.sqlite") == {s: n for s, n in units}
    done = {int(k): v for k, v in main["units_done"].items()}
    assert done[1] > done[2] and done[0] > done[2]  # the fast ranks come back sooner and get more units
    assert [w["served"] for w in workers] == [done[1], done[2]]
    assert main["evaluations"] == len(units) and main["examples_evaluated"] == sum(n for _, n in units)  # workers' units counted

    dealt = {rank: [n for r, _, _, n, _ in history if r == rank] for rank in slowness}
    static = {rank: [n for i, (_, n) in enumerate(units) if i % 3 == rank] for rank in slowness}  # round-robin deal
    coordinated, round_robin = idle(loads(dealt, slowness)), idle(loads(static, slowness))
    assert coordinated < 0.5 * round_robin, (coordinated, round_robin, dealt)
    # the busy seconds rank 0 logs are each rank's own evaluation time (reported, not asserted: wall clock)
    print(f"idle in example-units: coordinator {coordinated:.0f}, round-robin {round_robin:.0f}; measured busy {main['busy_s']} of {main['batch_s']:.2f} s")


def test_a_failing_unit_on_a_worker_stops_the_run_cleanly_in_one_line(launch, tmp_path):
    units = uneven_units(16, seed=1)
    codes, (main, *workers) = launch("fail", 3, units=units, fail_after={"1": 2}, log=str(tmp_path / "rank0.log"))
    assert codes == [0, 0, 0], [w.get("stderr") for w in workers]  # rank 0 reported; every worker was told to stop
    assert main["error"] == "rank 1: ValueError: cannot evaluate this unit on rank 1"
    log = (tmp_path / "rank0.log").read_text()  # the worker's whole traceback reached rank 0's log
    assert "traceback (rank 1, evaluating unit-" in log and "in evaluate" in log
    assert "ValueError: cannot evaluate this unit on rank 1\nsecond line" in log
    rows = store_rows(tmp_path / "scores.sqlite")
    finished = {subject for _, subject, *_ in main["history"]}
    assert rows == {s: n for s, n in units if s in finished}  # what finished is kept, complete
    assert len(finished) < len(units)  # nothing more was dealt after the failure


def test_a_killed_worker_stops_rank_0_and_the_relaunch_evaluates_only_what_is_missing(launch, tmp_path):
    units = uneven_units(16, seed=2)
    codes, (main, worker1, worker2) = launch("killed", 3, units=units, die_after={"2": 1})
    assert codes[0] == 0 and codes[1] == 0 and codes[2] == -signal.SIGKILL, worker1.get("stderr")
    assert main["error"].startswith("rank 2 stopped while evaluating unit-")  # did not hang on the dead connection
    lost = main["error"].split("evaluating ", 1)[1].split(" ", 1)[0]
    before = store_rows(tmp_path / "scores.sqlite")
    assert lost not in before
    assert before == {s: n for s, n in units if s in before}

    codes, (again, _) = launch("relaunch", 2, units=units)  # another process count, same store
    assert codes == [0, 0] and "error" not in again
    evaluated = sorted(subject for _, subject, *_ in again["history"])
    assert evaluated == sorted(s for s, _ in units if s not in before)  # the lost unit again, nothing finished twice
    assert lost in evaluated
    assert store_rows(tmp_path / "scores.sqlite") == {s: n for s, n in units}


def test_a_stalled_worker_s_unit_goes_to_another_process_and_the_run_ends_without_waiting_for_it(launch, tmp_path):
    units = uneven_units(16, seed=3)
    codes, (main, worker1, worker2) = launch("stalled", 3, units=units, stall_after={"2": 1}, unit_timeout=5.0)
    assert codes[:2] == [0, 0] and codes[2] == -signal.SIGKILL, worker1.get("stderr")  # rank 0 killed the stopped rank
    assert "error" not in main, main
    assert sorted(subject for _, subject, *_ in main["history"]) == [s for s, _ in units]  # every unit exactly once
    assert store_rows(tmp_path / "scores.sqlite") == {s: n for s, n in units}
    assert main["stalls"] == {"0": 0, "1": 0, "2": 1} and main["units_done"]["2"] == 1
    warnings = [line for line in main["stderr"].splitlines() if line.startswith("rank 2 stalled: no answer for ")]
    assert len(warnings) == 1 and "its unit goes to another process" in warnings[0], main["stderr"]
    assert "rank 2 (pid " in main["stderr"] and "killed it so that the launch can end" in main["stderr"]


def test_a_late_answer_is_discarded_and_the_rank_takes_units_again(launch, tmp_path):
    units = uneven_units(60, seed=4)
    codes, (main, late, _) = launch("late", 3, units=units, late_once={"1": [1, 6.0]}, unit_timeout=2.5, stall_factor=2.0, example_s=0.05)
    assert codes == [0, 0, 0] and "error" not in main, main["stderr"]
    assert main["stalls"]["1"] == 1 and main["late"]["1"] == 1
    discarded = late["subjects"][1]  # the unit it answered late
    assert [subject for rank, subject, *_ in main["history"]].count(discarded) == 1
    assert (1, discarded) not in {(rank, subject) for rank, subject, *_ in main["history"]}
    with sqlite3.connect(tmp_path / "scores.sqlite") as con:
        assert {p for (p,) in con.execute("SELECT DISTINCT prediction FROM scores WHERE subject=?", (discarded,))} != {"rank1"}
    assert late["served"] == main["units_done"]["1"] + 1 and main["units_done"]["1"] >= 2  # it worked again after
    assert store_rows(tmp_path / "scores.sqlite") == {s: n for s, n in units}


def test_when_every_worker_stalls_the_run_stops_in_one_line_and_a_relaunch_resumes(launch, tmp_path):
    units = uneven_units(16, seed=5)
    codes, (main, worker) = launch("all-stalled", 2, units=units, stall_after={"1": 2}, unit_timeout=4.0)
    assert codes == [0, -signal.SIGKILL], worker.get("stderr")  # rank 0 returned (the harness reports its error)
    assert main["error"].startswith("every worker stalled: rank 1 (no answer for "), main
    assert "finished units are in the store: run the same command again to continue" in main["error"]
    before = store_rows(tmp_path / "scores.sqlite")
    assert 0 < len(before) < len(units) and before == {s: n for s, n in units if s in before}

    codes, (again, _) = launch("resume", 2, units=units)
    assert codes == [0, 0] and "error" not in again
    assert sorted(subject for _, subject, *_ in again["history"]) == sorted(s for s, _ in units if s not in before)
    assert store_rows(tmp_path / "scores.sqlite") == {s: n for s, n in units}


def test_a_worker_that_stops_while_idle_does_not_hang_the_shutdown(launch, tmp_path):
    units = uneven_units(8, seed=6)
    codes, (main, _) = launch("idle-stop", 2, units=units, stop_before_close=1, unit_timeout=4.0)
    assert codes == [0, -signal.SIGKILL] and "error" not in main, main["stderr"]
    assert "rank 1 did not acknowledge the stop" in main["stderr"] and "killed it so that the launch can end" in main["stderr"]
    assert store_rows(tmp_path / "scores.sqlite") == {s: n for s, n in units}


def test_a_rank_that_cannot_start_stops_every_rank_with_one_line_naming_it(launch):
    problem = "base_model: cannot read '/models/x' (Permission denied); give a readable checkpoint folder or .gguf file"
    codes, outputs = launch("startup", 3, units=[], problems={"2": problem})
    assert codes == [0, 0, 0], [o["stderr"] for o in outputs]
    assert [o.get("startup_error") for o in outputs] == [f"rank 2 could not start: {problem}"] * 3


if __name__ == "__main__":
    child(Path(sys.argv[1]))
