"""Short numeric answers: the first number of a completion, compared exactly with the answer.

A completion is read up to ``MAX_CHARS`` characters (a longer one is cut, never scanned whole);
the first number in it (see ``gsm8k.ANY_NUMBER``: exact fractions, grouped thousands) is the
answer. reward = correct = (that number == the answer).
"""

from __future__ import annotations

from fractions import Fraction

from corpmerge.rewards.gsm8k import ANY_NUMBER, to_number

MAX_CHARS = 200


def first_value(text: str) -> Fraction | None:
    """The first number in the first ``MAX_CHARS`` characters, or None."""
    found = ANY_NUMBER.search(text[:MAX_CHARS].replace("−", "-"))
    return to_number(found.group()) if found else None


def first_answer(text: str) -> str | None:
    """``first_value`` as text, for votes: '7', '3/2'."""
    value = first_value(text)
    return None if value is None else str(value)


def score(completion: str, answer: int) -> dict[str, float]:
    """reward = correct = 1 if ``first_value(completion) == answer`` else 0."""
    value = first_value(completion)
    correct = float(value is not None and value == answer)
    return {"reward": correct, "correct": correct}
