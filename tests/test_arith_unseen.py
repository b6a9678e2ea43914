"""corpmerge_arith_unseen: test questions that train never asks, by construction."""

from __future__ import annotations

import sys

import pytest

from corpmerge.tasks import tasks_dir


@pytest.fixture(scope="module")
def data():
    sys.path.insert(0, str(tasks_dir() / "arith_unseen"))
    try:
        import arith_unseen_data
    finally:
        sys.path.pop(0)
    return arith_unseen_data


@pytest.mark.parametrize("seed", [0, 1])
def test_train_and_test_ask_disjoint_questions(data, seed):
    split = data.split_questions(seed)
    assert not {q for q, _ in split["train"]} & {q for q, _ in split["test"]}
    assert len(split["train"]) + len(split["test"]) == len(data.pool()) == len({q for q, _ in data.pool()})
    built = data.build_dataset(seed=seed)
    train, test = (built[s]["question"] for s in ("train", "test"))
    assert len(test) == len(set(test)) == 2500 and len(train) == len(set(train)) == 1000  # no question twice in a split
    assert not set(train) & set(test)
    for row in built["test"].to_list()[:200]:
        assert len(set(row["choices"])) == 4
        text, right = row["question"], int(row["choices"][row["answer"]])
        assert dict(data.pool())[text] == right


def test_the_splits_are_a_pure_function_of_the_seed(data):
    assert data.build_dataset(seed=3)["test"].to_list()[:50] == data.build_dataset(seed=3)["test"].to_list()[:50]
    assert data.split_questions(0)["test"] != data.split_questions(1)["test"]


def test_a_split_larger_than_its_questions_is_refused(data):
    with pytest.raises(ValueError, match="distinct questions"):
        data.build_dataset(train_size=5000)
