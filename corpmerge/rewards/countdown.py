"""Countdown: combine the given numbers with + - * / to reach the target.

Puzzles are generated from a seed and solvable by construction (the target is the value of a
random expression over all the numbers). Reward = 0.1·format + 1.0·answer, so it lies in
{0, 0.1, 1.1}; format = there is an <answer> block; correct = its expression uses exactly the given
numbers (as a multiset) and its exact value is the target, and a stated right-hand side
(``… = 103``, each one if chained) is the target too.
"""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

from corpmerge.rewards.expression import ExpressionError, evaluate

OPEN, CLOSE = "<answer>", "</answer>"
MAX_ANSWER = 1000  # characters of an answer worth evaluating
_ASCII_OPS = str.maketrans({"×": "*", "÷": "/", "−": "-"})
PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number exactly once. Show your work, then give the final expression "
    "in <answer> </answer> tags, for example <answer>(1 + 2) / 3</answer>."
)


def make_puzzle(rng: random.Random, count: int = 4) -> dict:
    """Numbers in 1..99 and a positive integer target reachable with all of them."""
    while True:
        numbers = [rng.randint(1, 99) for _ in range(count)]
        order = numbers[:]
        rng.shuffle(order)
        value, text = Fraction(order[0]), str(order[0])
        for n in order[1:]:
            op = rng.choice("+-*/")
            if op == "/" and (n == 0 or (value / n).denominator != 1):
                op = "+"
            value = {"+": value + n, "-": value - n, "*": value * n, "/": value / n}[op]
            text = f"({text} {op} {n})"
        if value.denominator == 1 and 1 <= value <= 1000:
            return {"numbers": numbers, "target": int(value), "solution": text}


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        puzzle = make_puzzle(rng, rng.choice([3, 4]))
        puzzle["prompt"] = PROMPT.format(numbers=puzzle["numbers"], target=puzzle["target"])
        rows.append(puzzle)
    return rows


def extract_answer(completion: str) -> str | None:
    """The content of the last <answer>…</answer> block (the last opening tag with a closing tag
    after it, up to that closing tag); found in linear time."""
    end = completion.rfind(CLOSE)
    start = completion.rfind(OPEN, 0, end) if end >= 0 else -1
    if start < 0:
        return None
    start += len(OPEN)
    return completion[start : completion.index(CLOSE, start)].strip()


def vote_answer(completion: str) -> str | None:
    """The answer expression without white space, as the RandOpt vote counts it."""
    answer = extract_answer(completion)
    return None if answer is None else "".join(answer.split())


def solves(answer: str, numbers: list[int], target: int) -> bool:
    """The expression before any `=` uses exactly ``numbers`` and equals ``target``, as does every
    expression after one; False for anything that is not such an expression or too long."""
    if len(answer) > MAX_ANSWER:
        return False
    expression, *stated = answer.translate(_ASCII_OPS).split("=")
    try:
        value, used = evaluate(expression)
        return Counter(used) == Counter(numbers) and value == target and all(evaluate(s)[0] == target for s in stated)
    except ExpressionError:
        return False


def score(completion: str, numbers: list[int], target: int) -> tuple[float, bool]:
    """(reward, correct) of one completion."""
    answer = extract_answer(completion)
    if answer is None:
        return 0.0, False
    correct = solves(answer, numbers, target)
    return 0.1 + (1.0 if correct else 0.0), correct
