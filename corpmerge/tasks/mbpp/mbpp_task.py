"""lm-eval hooks for corpmerge_mbpp: code runs in corpmerge's sandbox, never in-process; the asserts are judged outside it.

Local data: ``<data_dir>/train.jsonl`` and ``test.jsonl`` with ``text``, ``code``, ``test_list``
and ``test_setup_code`` (the MBPP columns). Hub: google-research-datasets/mbpp (full).
"""

from __future__ import annotations

from corpmerge.rewards import mbpp
from corpmerge.tasks.datasources import load_splits, map_splits


def build_dataset(**metadata: object):
    def hub():
        import datasets

        return datasets.load_dataset("google-research-datasets/mbpp", "full")

    data = load_splits("mbpp", metadata, ["train", "test"], hub)
    return map_splits(data, lambda row, i: {"prompt": mbpp.PROMPT.format(text=row["text"], tests="\n".join(row["test_list"]))})


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    completion = results[0]
    if "<answer>" in completion and "</answer>" not in completion:
        completion += "</answer>"
    reward, correct = mbpp.score(completion, doc.get("test_setup_code") or "", list(doc["test_list"]))
    return {"reward": reward, "correct": float(correct)}


vote_answer = mbpp.extract_code  # metadata.answer: the answer the RandOpt vote counts
