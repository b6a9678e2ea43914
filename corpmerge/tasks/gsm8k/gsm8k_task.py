"""lm-eval hooks for corpmerge_gsm8k: local JSONL (data_dir) or the Hub's openai/gsm8k."""

from __future__ import annotations

from corpmerge.rewards import gsm8k
from corpmerge.tasks.datasources import load_splits


def build_dataset(**metadata: object):
    def hub():
        import datasets

        return datasets.load_dataset("openai/gsm8k", "main")

    return load_splits("gsm8k", metadata, ["train", "test"], hub)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return gsm8k.score(results[0], doc["answer"])


vote_answer = gsm8k.vote_answer  # metadata.answer: the answer the RandOpt vote counts
