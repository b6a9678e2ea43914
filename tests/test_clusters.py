"""Held-out intervals clustered by a field the task declares (``metadata.cluster_by``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import scoring_recipe, write_recipe
from tiny import write_mc_task

from corpmerge.gate.paired import clustered_interval, paired_interval
from corpmerge.output.report_schema import RunReport
from corpmerge.recipe import parse_recipe


def test_one_example_per_cluster_is_the_paired_interval():
    rng = np.random.default_rng(7)
    base, cand = rng.random(300) < 0.4, rng.random(300) < 0.5
    assert np.allclose(clustered_interval(base, cand, [str(i) for i in range(300)]), paired_interval(base, cand))
    assert clustered_interval(base, cand, None) == paired_interval(base, cand)


def test_clustered_interval_matches_a_hand_computation():
    base = [0, 0, 0, 0, 1, 0]
    cand = [1, 1, 0, 0, 0, 1]  # d = 1, 1, 0, 0, −1, 1: mean 1/3
    mean, low, high = clustered_interval(base, cand, ["a", "a", "b", "b", "c", "c"])
    # centred sums per cluster: 4/3, −2/3, −2/3; Var = 3/2·(24/9)/6² = 1/9
    assert mean == pytest.approx(1 / 3) and high - mean == pytest.approx(1.96 / 3) and mean - low == pytest.approx(1.96 / 3)


def test_repeating_a_question_widens_the_interval_it_does_not_add_evidence():
    rng = np.random.default_rng(3)
    base, cand = rng.random(200) < 0.4, rng.random(200) < 0.55
    copies = 5  # every example asked five times, answered the same way each time
    b, c = np.repeat(base, copies), np.repeat(cand, copies)
    _, low, high = clustered_interval(b, c, np.repeat(np.arange(200).astype(str), copies).tolist())
    _, plain_low, plain_high = paired_interval(base, cand)
    _, naive_low, naive_high = paired_interval(b, c)
    assert high - low == pytest.approx(plain_high - plain_low, rel=1e-9)  # exactly the 200 distinct examples' interval
    assert naive_high - naive_low < 0.5 * (high - low)  # ignoring the repeats claims √5 × the precision


def clustered_task(folder: Path, field: str) -> Path:
    write_mc_task(folder)
    yaml_path = folder / "tiny_mc.yaml"
    yaml_path.write_text(yaml_path.read_text() + f"metadata:\n  cluster_by: {field}\n")
    return folder


def test_the_report_gives_clustered_intervals_and_says_so(tmp_path, tiny_model):
    from corpmerge.pipeline import run_recipe
    from corpmerge.report.view import evaluation_view

    tasks = clustered_task(tmp_path / "tasks", "question")
    report = run_recipe(parse_recipe(scoring_recipe(tiny_model, tasks, tmp_path / "out", evaluate={"split": "test"})))
    evaluation = report["evaluation"]
    questions = [json.loads(line)["question"] for line in (tasks / "tiny_mc_test.jsonl").read_text().splitlines()]
    assert evaluation["clustered_by"] == {"tiny_mc": "question"} and evaluation["clusters"] == len(set(questions))
    held = RunReport.of_run({k: v for k, v in report.items() if k != "report_path"}).evaluation
    assert "clustered by question (tiny_mc)" in held.clustering_note()
    assert any("clustered by question" in str(getattr(part, "plain", "")) for part in evaluation_view(held, "corp"))


def test_a_cluster_field_the_documents_lack_is_one_line_exit_2(tmp_path, tiny_model):
    tasks = clustered_task(tmp_path / "tasks", "topic")
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tasks, tmp_path / "out"))
    ran = subprocess.run([sys.executable, "-m", "corpmerge", "run", str(recipe)], capture_output=True, text=True)
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert "metadata.cluster_by 'topic' is not a field of its documents" in ran.stderr and "Traceback" not in ran.stderr
