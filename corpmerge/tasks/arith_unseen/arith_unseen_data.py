"""corpmerge_arith_unseen: easy-arithmetic multiple choice whose test questions train never asks (no download).

The four kinds of ``corpmerge_arith`` over wider numbers — "which number comes right after a" (a ≤ 1,200),
"a minus 1" (a ≤ 1,200), "a plus b" (a ≤ 99, b ≤ 9) and "a minus b" (10 ≤ a ≤ 99, 2 ≤ b ≤ 9: b = 1 is "a minus 1") — make a pool of
4,010 distinct questions. Each question belongs to one split by a hash of (seed, question): test when the hash,
read as a number in [0, 1), is below ``TEST_SHARE``, train otherwise. So the splits' question sets are disjoint by
construction (about 2,670 test and 1,340 train questions), and each split draws its rows *without replacement*
from its own questions: no question appears twice in a split, and none in both. Choices are the right answer
and three near misses, as in ``corpmerge_arith``.
"""

from __future__ import annotations

import hashlib
import random

from corpmerge.tasks.arith.arith_data import choice_row

TEST_SHARE = 2 / 3  # of the pool's questions, by hash


def pool() -> list[tuple[str, int]]:
    """Every question the task can ask, with its answer, in a fixed order."""
    questions = [(f"Which number comes right after {a}?", a + 1) for a in range(1, 1201)]
    questions += [(f"What is {a} minus 1?", a - 1) for a in range(2, 1201)]
    questions += [(f"What is {a} plus {b}?", a + b) for a in range(1, 100) for b in range(1, 10)]
    questions += [(f"What is {a} minus {b}?", a - b) for a in range(10, 100) for b in range(2, 10)]
    return questions


def in_test(text: str, seed: int) -> bool:
    """Whether question ``text`` is a test question: blake2b(seed, text) as a fraction of 2⁶⁴, below ``TEST_SHARE``."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < TEST_SHARE


def split_questions(seed: int) -> dict[str, list[tuple[str, int]]]:
    """The pool partitioned into train and test questions (disjoint, together the whole pool)."""
    out: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for text, answer in pool():
        out["test" if in_test(text, seed) else "train"].append((text, answer))
    return out


def make_rows(questions: list[tuple[str, int]], n: int, seed: int) -> list[dict]:
    """``n`` distinct questions drawn from ``questions`` (without replacement), each with 4 choices (``answer`` indexes the right one)."""
    if n > len(questions):
        raise ValueError(f"corpmerge_arith_unseen: {n} rows asked of a split with {len(questions)} distinct questions")
    rng = random.Random(seed)
    return [choice_row(text, right, rng) for text, right in rng.sample(questions, n)]


def build_dataset(train_size: int = 1000, test_size: int = 2500, seed: int = 0, **_: object):
    """lm-eval ``custom_dataset`` hook: train and test rows from the disjoint question sets of ``split_questions``."""
    import datasets

    questions = split_questions(seed)
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(make_rows(questions["train"], train_size, seed * 2 + 1)),
            "test": datasets.Dataset.from_list(make_rows(questions["test"], test_size, seed * 2 + 2)),
        }
    )
