"""lm-eval hooks for corpmerge_olympiadbench (English open-ended maths, competition subset).

Local data: ``<data_dir>/train.jsonl`` and ``test.jsonl`` with ``question`` and ``final_answer``
(a list of strings). Hub: Hothan/OlympiadBench (OE_TO_maths_en_COMP), which has one split; it
is cut deterministically into train (support) and test halves.
"""

from __future__ import annotations

from corpmerge.rewards import math_answer
from corpmerge.tasks.datasources import load_splits


def build_dataset(**metadata: object):
    def hub():
        import datasets

        full = datasets.load_dataset("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", split="train")
        halves = full.train_test_split(test_size=0.5, seed=0)
        return datasets.DatasetDict({"train": halves["train"], "test": halves["test"]})

    return load_splits("olympiadbench", metadata, ["train", "test"], hub)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    answers = doc["final_answer"] if isinstance(doc["final_answer"], list) else [doc["final_answer"]]
    reward, correct = math_answer.score(results[0], [str(a) for a in answers])
    return {"reward": reward, "correct": float(correct)}


vote_answer = math_answer.vote_answer  # metadata.answer: the answer the RandOpt vote counts
