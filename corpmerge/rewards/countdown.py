"""Countdown: combine the given numbers with + - * / to reach the target.

Puzzles are generated from a seed and solvable by construction (the target is the value of a
random expression over all the numbers). Reward = 0.1·format + 1.0·answer, so it lies in
{0, 0.1, 1.1}; correct = the answer uses exactly the given numbers (as a multiset) and equals the
target within 1e-5.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from corpmerge.rewards.expression import ExpressionError, evaluate

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
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
    """The content of the last <answer>…</answer> block."""
    found = ANSWER.findall(completion)
    return found[-1].strip() if found else None


def score(completion: str, numbers: list[int], target: int) -> tuple[float, bool]:
    """(reward, correct) of one completion."""
    answer = extract_answer(completion)
    if answer is None:
        return 0.0, False
    answer = answer.replace("×", "*").replace("÷", "/").replace("−", "-").split("=")[0]
    try:
        value, used = evaluate(answer)
    except ExpressionError:
        return 0.1, False
    correct = Counter(used) == Counter(numbers) and abs(float(value) - target) < 1e-5
    return 0.1 + (1.0 if correct else 0.0), correct
