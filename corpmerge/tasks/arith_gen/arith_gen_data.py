"""corpmerge_arith_gen: procedurally generated arithmetic with a short generated answer (no download).

Question types: "a minus 1", single-digit addition, small subtraction, two-digit plus one-digit
addition and single-digit multiplication; the prompt shows two solved questions first, so the
answer is the first number the model writes. The data is a pure function of the seed; train
(support) and test use disjoint seeds. SmolLM2-135M-Instruct answers about a third correctly.
"""

from __future__ import annotations

import random
from typing import Any

from corpmerge.rewards import arith
from corpmerge.tasks.arith.arith_data import digit_sum, minus_one, question, seeded_splits, small_difference


def two_digit_sum(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 49), rng.randint(1, 9)
    return f"What is {a} plus {b}?", a + b


def digit_product(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} times {b}?", a * b


KINDS = (minus_one, digit_sum, small_difference, two_digit_sum, digit_product)


def make_rows(n: int, seed: int) -> list[dict]:
    """``n`` questions with their numeric answers."""
    rng = random.Random(seed)
    return [dict(zip(("question", "answer"), question(rng, KINDS))) for _ in range(n)]


def build_dataset(train_size: int = 1000, test_size: int = 500, seed: int = 0, **_: object):
    """lm-eval ``custom_dataset`` hook: a DatasetDict with train and test splits."""
    return seeded_splits(make_rows, train_size, test_size, seed)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return arith.score(results[0], doc["answer"])


vote_answer = arith.first_answer  # metadata.answer: the answer the RandOpt vote counts
