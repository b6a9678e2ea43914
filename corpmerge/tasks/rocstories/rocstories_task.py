"""lm-eval hooks for corpmerge_rocstories (sentence ordering).

Local data: ``<data_dir>/train.jsonl`` and ``test.jsonl`` with ``sentence1`` … ``sentence5``
(the ROCStories CSV columns). Hub: mintujupally/ROCStories (``text`` holds the five sentences).
Each story is shuffled deterministically from its index.
"""

from __future__ import annotations

import re

from corpmerge.rewards import rocstories
from corpmerge.tasks.datasources import load_splits, map_splits


def _sentences(row: dict) -> list[str]:
    if "sentence1" in row:
        return [row[f"sentence{i}"] for i in range(1, 6)]
    parts = re.split(r"(?<=[.!?])\s+", row["text"].strip())
    return (parts + [""] * 5)[:5]


def build_dataset(**metadata: object):
    def hub():
        import datasets

        return datasets.load_dataset("mintujupally/ROCStories")

    data = load_splits("rocstories", metadata, ["train", "test"], hub)
    return map_splits(data, lambda row, i: rocstories.shuffle_story(_sentences(row), seed=i))


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    completion = results[0]
    if "<answer>" in completion and "</answer>" not in completion:
        completion += "</answer>"
    reward, correct = rocstories.score(completion, doc["gold"])
    return {"reward": reward, "correct": float(correct)}


vote_answer = rocstories.parse_order  # metadata.answer: the answer the RandOpt vote counts
