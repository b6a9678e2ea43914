"""Each shipped task loads through lm-eval's TaskManager offline and runs on a tiny model."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.lmeval import TaskSuite, make_lm
from corpmerge.tasks import list_tasks, tasks_dir

FIXTURES = Path(__file__).parent / "fixtures"
TASKS = {
    "corpmerge_arith": None,
    "corpmerge_arith_gen": None,
    "corpmerge_arith_unseen": None,
    "corpmerge_countdown": None,
    "corpmerge_gsm8k": FIXTURES / "gsm8k",
    "corpmerge_olympiadbench": FIXTURES / "olympiadbench",
    "corpmerge_rocstories": FIXTURES / "rocstories",
    "corpmerge_mbpp": FIXTURES / "mbpp",
}


@pytest.fixture(scope="module")
def lm(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return make_lm(model, AutoTokenizer.from_pretrained(tiny_model), batch_size=4)


def test_every_task_is_listed():
    assert set(list_tasks()) == set(TASKS)
    assert all(summary for summary in list_tasks().values())
    assert (tasks_dir() / "gsm8k" / "corpmerge_gsm8k.yaml").is_file()


@pytest.mark.parametrize("name", list(TASKS))
def test_task_runs_offline_on_three_examples(name, lm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data_dir = TASKS[name]
    spec = ScoringSpec(tasks=[name], task_args={"data_dir": str(data_dir)} if data_dir else {})
    for split in ("train", "test"):
        suite = TaskSuite(spec, split=split)
        assert suite.doc_count(name) >= 3
    scores = suite.evaluate(lm, {name: [0, 1, 2]})
    assert sorted(scores) == [(name, 0), (name, 1), (name, 2)]
    for score in scores.values():
        assert 0.0 <= score.value <= 1.1 and isinstance(score.correct, bool)


def test_support_suite_refuses_the_test_split():
    from corpmerge.errors import CorpmergeError

    spec = ScoringSpec(tasks=["corpmerge_countdown"], support={"split": "test"})
    with pytest.raises(CorpmergeError, match="must not use it"):
        TaskSuite(spec)


def test_arith_test_split_grew_to_1600_keeping_its_first_500_and_the_train_split():
    """Version 1.1 draws 1,600 test rows in sequence from the split's seed: the 500 of 1.0 come first, train is unchanged."""
    import hashlib
    import json
    import sys

    sys.path.insert(0, str(tasks_dir() / "arith"))
    try:
        from arith_data import build_dataset
    finally:
        sys.path.pop(0)

    def digest(rows: list[dict]) -> str:
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    data = build_dataset()
    assert len(data["test"]) == 1600 and len(data["train"]) == 1000
    assert digest(data["test"].to_list()[:500]) == "074caa2d532b2da6"  # task version 1.0's test split
    assert digest(data["train"].to_list()) == "a9248b24369fe53d"
