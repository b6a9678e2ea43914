"""GSM8K answers: strict `#### number` extraction, with the last number as a relaxed fallback."""

from __future__ import annotations

import re

_NUMBER = r"-?[\d,]*\.?\d+"
STRICT = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
ANY_NUMBER = re.compile(_NUMBER)


def to_number(text: str) -> float | None:
    """'1,234.50' → 1234.5; None when it is not a number."""
    cleaned = text.replace(",", "").replace("$", "").replace("−", "-").strip().rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def strict_answer(text: str) -> float | None:
    found = STRICT.findall(text.replace("−", "-"))
    return to_number(found[-1]) if found else None


def relaxed_answer(text: str) -> float | None:
    found = ANY_NUMBER.findall(text.replace("−", "-"))
    return to_number(found[-1]) if found else None


def same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def score(completion: str, reference_solution: str) -> dict[str, float]:
    """reward = correct = strict match; `relaxed` = last-number match (reported separately)."""
    gold = strict_answer(reference_solution)
    strict = same(strict_answer(completion), gold)
    return {"reward": float(strict), "correct": float(strict), "relaxed": float(same(relaxed_answer(completion), gold))}
