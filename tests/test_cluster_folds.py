"""Folds cut by cluster and the gate's statistics clustered where a task declares ``metadata.cluster_by``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import scoring_recipe

from corpmerge.gate.paired import paired_stats
from corpmerge.recipe import SupportSpec, parse_recipe
from corpmerge.scoring.folds import FOLDS, assign_folds, fold_fingerprint


def test_the_clustered_lcb_matches_a_hand_computation():
    # d = 1, 1, 1, 0 | 0, 0 | −1, 1: mean 3/8; clusters a, b, c
    base = [0, 0, 0, 0, 0, 0, 1, 0]
    cand = [1, 1, 1, 0, 0, 0, 0, 1]
    s = paired_stats(base, cand, z=1.645, regression_penalty=2.0, clusters=list("aaaabbcc"))
    # centred cluster sums: a 3 − 4·3/8 = 3/2, b −6/8 = −3/4, c 0 − 6/8 = −3/4
    # Var = G/(G−1)·Σ sums²/n² = 3/2·(9/4 + 9/16 + 9/16)/64 = 3/2·(27/8)/64 = 81/1024
    assert s.mean_diff == pytest.approx(3 / 8) and s.clusters == 3
    assert s.lcb == pytest.approx(3 / 8 - 1.645 * 9 / 32)
    sd = math.sqrt(sum((d - 3 / 8) ** 2 for d in (1, 1, 1, 0, 0, 0, -1, 1)) / 7)
    assert s.lcb_per_example == pytest.approx(3 / 8 - 1.645 * sd / math.sqrt(8))
    assert s.fixes == 4 and s.regressions == 1 and s.constructive_score == pytest.approx(2 / 8)
    plain = paired_stats(base, cand, z=1.645, regression_penalty=2.0)  # no clusters: as before, nothing added
    assert plain.lcb == s.lcb_per_example and plain.clusters is None and "clusters" not in plain.as_dict()


def test_one_example_per_cluster_is_the_per_example_lcb():
    rng = np.random.default_rng(5)
    base, cand = rng.random(120) < 0.4, rng.random(120) < 0.5
    s = paired_stats(base, cand, 1.645, 2.0, [str(i) for i in range(120)])
    assert s.lcb == pytest.approx(s.lcb_per_example, rel=1e-12)


def copies(n_questions: int, n_copies: int) -> list[str]:
    """Labels of a split that asks each of ``n_questions`` questions ``n_copies`` times, in a seeded order."""
    labels = [f"q{i}" for i in range(n_questions) for _ in range(n_copies)]
    return [labels[i] for i in np.random.default_rng(1).permutation(len(labels))]


def test_copies_of_one_question_stay_in_one_fold():
    labels = copies(30, 8)
    support = SupportSpec(limit=200, split_seed=4)
    plain = assign_folds({"t": len(labels)}, support)
    crossing = {q for q in set(labels) if sum(any(labels[d] == q for d in plain[f]["t"]) for f in FOLDS) > 1}
    assert crossing  # cut by example, copies of a question land in two folds
    folds = assign_folds({"t": len(labels)}, support, {"t": labels})
    held = [{labels[d] for d in folds[f]["t"]} for f in FOLDS]
    assert not (held[0] & held[1]) and not (held[0] & held[2]) and not (held[1] & held[2])
    kept = sorted(d for f in FOLDS for d in folds[f]["t"])
    assert kept == sorted(d for f in FOLDS for d in plain[f]["t"])  # the same `limit` examples, cut otherwise
    for fold, fraction in zip(FOLDS, (support.folds.construct_, support.folds.validate_, support.folds.probe)):
        assert abs(len(folds[fold]["t"]) - fraction * 200) <= 8  # within a cluster of the fractions


def test_tasks_without_clusters_keep_their_folds():
    # the fingerprint of the folds corpmerge cut before clustering existed (pinned): old stores stay valid
    counts, support = {"tiny_mc": 100, "other": 57}, SupportSpec(limit=80, split_seed=0)
    assert fold_fingerprint(assign_folds(counts, support)) == "854fc1d0d547ab4a73f32669"
    assert assign_folds(counts, support, {}) == assign_folds(counts, support)
    clustered_other = assign_folds(counts, support, {"other": copies(19, 3)})
    assert {f: d["tiny_mc"] for f, d in clustered_other.items()} == {f: d["tiny_mc"] for f, d in assign_folds(counts, support).items()}


def repeated_task(folder: Path, n_questions: int = 20, n_copies: int = 6) -> Path:
    """A 4-choice task whose train split asks each question ``n_copies`` times with other choices (cluster_by: question)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for q in range(n_questions * n_copies):
        a, b = divmod(q % n_questions, 4)
        right = a + b
        choices = [right, *rng.choice([x for x in range(20) if x != right], 3, replace=False).tolist()]
        rng.shuffle(choices)
        rows.append({"question": f"{a}+{b}=", "choices": [str(c) for c in choices], "answer": choices.index(right)})
    for split, part in (("train", rows), ("test", rows[:16])):
        (folder / f"rep_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (folder / "rep.yaml").write_text(
        "task: rep\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    train: {folder / 'rep_train.jsonl'}\n    test: {folder / 'rep_test.jsonl'}\n"
        'output_type: multiple_choice\ntraining_split: train\ntest_split: test\ndoc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
        "    higher_is_better: true\nmetadata:\n  cluster_by: question\n"
    )
    return folder


def test_a_run_cuts_folds_by_question_and_gates_on_clustered_lcbs(tmp_path, tiny_model):
    from corpmerge.pipeline import run_recipe
    from corpmerge.scoring.lmeval import TaskSuite

    tasks = repeated_task(tmp_path / "tasks")
    data = scoring_recipe(tiny_model, tasks, tmp_path / "out", gate={"enabled": True, "z": 0.0, "regression_penalty": 1.0, "probe_multipliers": [1]})
    data["scoring"] |= {"tasks": ["rep"], "support": {"limit": 120, "split_seed": 0}}
    recipe = parse_recipe(data)
    suite = TaskSuite(recipe.scoring)
    folds = assign_folds({"rep": suite.doc_count("rep")}, recipe.scoring.support, suite.cluster_labels())
    questions = [doc["question"] for doc in suite.tasks["rep"].eval_docs]
    held = [{questions[d] for d in folds[f]["rep"]} for f in FOLDS]
    assert sum(len(h) for h in held) == len(set(questions)) == 20  # every question in exactly one fold
    report = run_recipe(recipe)
    assert report["folds"] == {f: len(folds[f]["rep"]) for f in FOLDS}
    for cand in report["candidates"]:
        stats = cand["validate"]
        assert stats["clusters"] == len(held[1]) and "lcb_per_example" in stats
