"""Experiment tracking against the real libraries: a `corpmerge run` logs to TensorBoard and to an offline W&B run,
both read back from their files and compared with report.json; a missing tracker is one line before anything loads;
a tracker that fails mid-run is dropped and the run goes on; without `tracking:` no tracker library is imported."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, scoring_recipe, write_recipe

from corpmerge import progress
from corpmerge.errors import CorpmergeError
from corpmerge.recipe import Recipe, TrackingSpec
from corpmerge.tracking import Point, RunInfo, Tracking, flatten, require
from corpmerge.tracking.tensorboard import TensorBoardTracker


def at(report: dict[str, Any], tag: str, step: int) -> Any:
    """The report.json value a tag names: its JSON path, a list's item at ``step``."""
    node: Any = report
    for key in tag.split("/"):
        node = node[key]
        if isinstance(node, list):
            node = node[step]
    return node


def leaves(report: Any, tag: str = "") -> set[str]:
    """Every tag report.json's numbers and strings stand under (list items share their list's tag; lists in lists left out)."""
    if isinstance(report, dict):
        return set().union(*(leaves(v, f"{tag}/{k}" if tag else str(k)) for k, v in report.items())) if report else set()
    if isinstance(report, list):
        return set().union(*(leaves(v, tag) for v in report if not isinstance(v, list))) if report else set()
    return {tag} if report is not None else set()


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert "report" in tags["images"]
    text = {t.removesuffix("/text_summary") for t in tags["tensors"]}
    assert {"config", "gate/reason"} <= text
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags["scalars"]}


def wandb_records(run_file: Path) -> list[Any]:
    """The records of a W&B run file (LevelDB log format: 32 KiB blocks of chunks with a 7-byte header) as protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def wandb_logged(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[int, Any]], set[str]]:
    """An offline run's config, summary values logged as such, history rows by tag and step, and saved files."""
    config, summary, history, files = {}, {}, {}, set()
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in record.summary.update if u.key and not u.key.startswith("_")})
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            axes = [k.removesuffix("/index") for k in row if k.endswith("/index")]
            for tag, value in row.items():
                if not tag.startswith("_") and not tag.endswith("/index"):
                    history.setdefault(tag, {})[int(row[axes[0] + "/index"])] = value
        elif kind == "files":
            files |= {f.path for f in record.files.files}
    return config, summary, history, files


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model, tiny_task):
    tmp = tmp_path_factory.mktemp("tracked")
    out = tmp / "out"
    data = scoring_recipe(
        tiny_model,
        tiny_task,
        out,
        evaluate={"limit": 12, "ensemble_k": [1]},
        tracking={"report_to": "tensorboard", "run_name": "tiny"},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # no login here: W&B runs offline
    env.update(HOME=str(tmp), NETRC=str(tmp / "no-netrc"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "corpmerge", "-q", "run", str(write_recipe(tmp, data)), "--report-to", "tensorboard", "--report-to", "wandb"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    work = tmp / "out.work"
    report = json.loads(((out if (out / "report.json").is_file() else work) / "report.json").read_text())
    return report, work, out


def test_tensorboard_event_files_hold_what_report_json_holds(tracked_run):
    report, work, _ = tracked_run
    (board,) = (work / "runs").glob("*_tiny")  # <start time>_<run_name>
    logged = tensorboard_scalars(board)
    assert {"population/rewards", "racing/stage", "gate/accepted", "candidates/validate/lcb", "evaluation/rows/base/accuracy"} <= logged.keys()
    assert len(logged["population/rewards"]) == report["population"]["size"] == 6
    assert logged["progress/units"] and max(logged["progress/fraction"].values()) == 1.0  # while the run went, not report.json's
    for tag, values in logged.items():
        for step, value in values.items():
            if tag.startswith("progress/"):
                continue
            if tag == "racing/stage":  # the stage each entry reached: its examples' place among the stage sizes
                assert report["racing"]["stages"][int(value) - 1] == report["racing"]["examples"][step]
            else:
                expected = float(at(report, tag, step))
                assert math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-7), (tag, step, value, expected)  # event files hold float32
    numeric = {t for t in leaves(report) if not isinstance(at(report, t, 0), str)}
    assert numeric <= logged.keys(), numeric - logged.keys()
    artifacts = {p.name for p in (board / "artifacts").iterdir()}
    assert {"report.json", "report.png"} <= artifacts and ("README.md" in artifacts) == (report.get("output") is not None)


def test_an_offline_wandb_run_holds_what_report_json_holds(tracked_run):
    report, work, _ = tracked_run
    runs = list((work / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "no login here: the run is offline"
    config, summary, history, files = wandb_logged(runs[0])
    assert config["corpmerge_version"] and config["scoring"]["tasks"] == ["tiny_mc"]
    assert {"report.json", "report.png"} <= files
    assert summary["gate/reason"] == report["gate"]["reason"]
    for tag, value in summary.items():
        assert at(report, tag, 0) == value, tag
    assert history["progress/units"] and "progress/task" in history
    for tag, values in history.items():
        if tag.startswith("progress/"):
            continue
        for step, value in values.items():
            expected = report["racing"]["examples"][step] if tag == "racing/stage" else at(report, tag, step)
            if tag == "racing/stage":
                assert report["racing"]["stages"][int(value) - 1] == expected
            else:
                assert value == expected or math.isclose(value, expected), (tag, step)
    assert leaves(report) <= summary.keys() | history.keys()
    assert sorted(history["population/rewards"]) == list(range(report["population"]["size"]))


def test_a_missing_tracker_is_one_line_before_anything_loads(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tiny_task, out, tracking={"report_to": ["wandb"]}))
    hide = "import sys; sys.modules['wandb'] = None; from corpmerge.cli import main; sys.argv[0] = 'corpmerge'; main()"
    for command in (["run", str(recipe)], ["validate", str(recipe)]):
        result = subprocess.run([sys.executable, "-c", hide, *command], capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == ["error: tracking.report_to: wandb is not installed; pip install wandb (the corpmerge[wandb] extra)"], result.stderr
    assert not out.exists() and not (tmp_path / "out.work" / "scores.sqlite").exists()  # nothing scored, nothing written


def test_the_command_line_and_the_recipe_spell_trackers_as_transformers_does(tmp_path):
    base = {"base_model": "x", "population": [{"seed": 1, "sigma": 0.01, "reward": 0.5}]}
    assert Recipe.model_validate(base).tracking is None
    assert TrackingSpec(report_to="wandb").report_to == ["wandb"]
    assert TrackingSpec(report_to="none").report_to == []
    assert TrackingSpec(report_to=["tensorboard", "wandb", "tensorboard"]).report_to == ["tensorboard", "wandb"]
    recipe = Recipe.model_validate({**base, "tracking": {"report_to": ["wandb"], "project": "p"}})
    assert recipe.with_report_to(["tensorboard"]).tracking == TrackingSpec(report_to=["tensorboard"], project="p")
    assert recipe.with_report_to(["none"]).tracking.report_to == []
    assert recipe.with_report_to([]) is recipe
    with pytest.raises(CorpmergeError, match="--report-to: mlflow: use tensorboard, wandb or none"):
        recipe.with_report_to(["mlflow"])
    require(None)
    require(TrackingSpec(report_to=["tensorboard", "wandb"]))  # both installed here (the test extra)
    result = run_cli("validate", str(write_recipe(tmp_path, {**base, "tracking": {"report_to": ["mlfow"]}})))
    assert result.returncode == 2 and "tracking.report_to" in result.stderr and len(result.stderr.strip().splitlines()) == 1


class Failing:
    """A tracker that fails at its second call of ``scalars``."""

    name = "failing"

    def __init__(self) -> None:
        self.calls, self.closed = 0, False

    def config(self, values: dict[str, Any]) -> None:
        pass

    def scalars(self, points: list[Point]) -> None:
        self.calls += 1
        if self.calls == 2:
            raise OSError("No space left on device")

    def texts(self, points: list[Point]) -> None:
        pass

    def artifact(self, path: Path) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_a_tracker_failing_mid_run_is_dropped_and_the_others_go_on(tmp_path, caplog):
    failing = Failing()
    board = TensorBoardTracker(RunInfo("r", "p", tmp_path, tmp_path / "runs"))
    tracking = Tracking([failing, board])
    tracking.log(gate={"lcb": 0.25, "reason": "passed"})
    with caplog.at_level(logging.WARNING, logger="corpmerge.tracking"):
        tracking.log(candidates=[{"validate": {"lcb": 0.1}}, {"validate": {"lcb": 0.3}}])
        tracking.log(evaluation={"rows": {"merged": {"accuracy": 0.5}}})
    assert failing.closed and tracking.trackers == [board]
    assert [r.getMessage() for r in caplog.records if r.name == "corpmerge.tracking"] == [
        "tracking: failing failed while logging candidates (No space left on device); the run goes on without it"
    ]
    assert any(r.name == "corpmerge.traceback" and "OSError" in r.getMessage() for r in caplog.records)  # the traceback, for the log file
    tracking.finish({"gate": {"lcb": 0.25}, "evaluations": 3}, [])
    logged = tensorboard_scalars_plain(tmp_path / "runs")
    assert logged == {
        "gate/lcb": {0: 0.25},
        "candidates/validate/lcb": {0: pytest.approx(0.1), 1: pytest.approx(0.3)},
        "evaluation/rows/merged/accuracy": {0: 0.5},
        "evaluations": {0: 3.0},
    }


def tensorboard_scalars_plain(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_stage2_rounds_are_logged_at_their_index(tmp_path):
    from corpmerge.comparison import Paired, RoundRecord
    from corpmerge.output.report_schema import Stage2

    paired = Paired(n=20, fixes=3, regressions=1, constructive_score=0.05, mean_diff=0.1, sd=0.3, lcb=0.02, base_accuracy=0.4, accuracy=0.5)
    rounds = [
        RoundRecord(
            round=1, sigma=0.01, local_size=4, accepted=True, multiplier=2.0, reason="accepted", local_reward_max=0.6, local_reward_mean=0.5, validate=paired
        ),
        RoundRecord(round=2, local_size=4, accepted=False, reason="no candidate passed", local_reward_max=0.55, local_reward_mean=0.45),
    ]
    stage2 = Stage2(rounds=rounds, accepted=1, rejected=1, sigma_schedule="fixed")
    tracking = Tracking([TensorBoardTracker(RunInfo("r", "p", tmp_path, tmp_path / "runs"))])
    tracking.log(stage2=stage2)
    tracking.finish({}, [])
    logged = tensorboard_scalars_plain(tmp_path / "runs")
    report = {"stage2": json.loads(json.dumps(stage2.model_dump(mode="python", by_alias=True, exclude_unset=True)))}
    assert logged["stage2/rounds/accepted"] == {0: 1.0, 1: 0.0} and logged["stage2/rounds/validate/lcb"] == {0: pytest.approx(0.02)}
    for tag, values in logged.items():
        for step, value in values.items():
            assert value == pytest.approx(float(at(report, tag, step))), tag
    assert {t for t in leaves(report) if not isinstance(at(report, t, 0), str)} <= logged.keys()


def test_long_work_reaches_the_trackers_while_it_runs(tmp_path):
    before = progress.current()
    tracking = Tracking([TensorBoardTracker(RunInfo("r", "p", tmp_path, tmp_path / "runs"))])
    with progress.task("scoring population: stage 1/2 (4 of 8 examples)", 3) as advance:
        advance()
        advance(2)
    with progress.task("held-out evaluation (test)", 2) as advance:
        advance(2)
    tracking.finish({}, [])
    assert progress.current() is before
    logged = tensorboard_scalars_plain(tmp_path / "runs")
    assert logged == {"progress/fraction": {0: 1.0}, "progress/units": {0: 5.0}}  # each task's end; more often on long tasks


def test_records_flatten_to_their_json_paths():
    points = flatten("stage2", {"rounds": [{"round": 1, "validate": {"lcb": 0.5}, "candidates": [{"ess": 2}]}, {"round": 2, "reason": "no"}], "accepted": 1})
    assert [(p.tag, p.step, p.value, p.axis) for p in points] == [
        ("stage2/rounds/round", 0, 1.0, "stage2/rounds"),
        ("stage2/rounds/validate/lcb", 0, 0.5, "stage2/rounds"),
        ("stage2/rounds/round", 1, 2.0, "stage2/rounds"),
        ("stage2/rounds/reason", 1, "no", "stage2/rounds"),
        ("stage2/accepted", 0, 1.0, None),
    ]


def test_without_tracking_no_tracker_library_is_imported(tmp_path):
    code = (
        "import sys; from corpmerge.recipe import Recipe; from corpmerge.tracking import open_run; import corpmerge.pipeline\n"
        "t = open_run(Recipe.model_validate({'base_model': 'x', 'population': [{'seed': 1, 'sigma': 0.01, 'reward': 0.5}]}))\n"
        "t.log(gate={'lcb': 1.0}); t.finish({}, [])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorboard') or m == 'torch.utils.tensorboard'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
