"""lm-eval hooks for corpmerge_countdown (data generated from a seed; no download)."""

from __future__ import annotations

from corpmerge.rewards import countdown


def build_dataset(train_size: int = 2000, test_size: int = 500, seed: int = 0, **_: object):
    import datasets

    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(countdown.make_rows(train_size, seed * 2 + 1)),
            "test": datasets.Dataset.from_list(countdown.make_rows(test_size, seed * 2 + 2)),
        }
    )


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    completion = results[0]
    if "<answer>" in completion and "</answer>" not in completion:
        completion += "</answer>"  # generation stops at the closing tag, which lm-eval strips
    reward, correct = countdown.score(completion, doc["numbers"], doc["target"])
    return {"reward": reward, "correct": float(correct)}


vote_answer = countdown.vote_answer  # metadata.answer: the answer the RandOpt vote counts
