"""GSM8K answers: strict `#### number` extraction, with the last number as a relaxed fallback.

Numbers are compared exactly (as fractions of their decimal text, never as floats). Thousands
separators count only in groups of three: `1,800` is 1800, while `1,8` and `12,34,567` are not
numbers at all. All matching is linear in the length of the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 64  # characters of a number (digits, separators, sign, point); longer ones are no answer
# A number stands alone: no digit (or "digit," / ".") right before it, nor a digit, ",digit",
# ".digit" or an exponent right after it; so a broken grouping is not read in parts.
_DECIMAL = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
_NUMBER = rf"(?<![0-9.])(?<![0-9],)-?(?:{_DECIMAL})(?![0-9]|[.,][0-9]|[eE][-+]?[0-9])"
ANY_NUMBER = re.compile(_NUMBER)
_AFTER_MARK = re.compile(r"\s*(?:\$\s*)?")  # nothing follows it in the pattern: never backtracks
_MARK = "####"


def to_number(text: str) -> Fraction | None:
    """'1,234.50' → Fraction(2469, 2), '$18.' → 18; None when it is not one number (see the module doc)."""
    token = text.replace("−", "-").strip().removeprefix("$").strip().removesuffix(".")
    if len(token) > MAX_CHARS or ANY_NUMBER.fullmatch(token) is None:
        return None
    return Fraction(token.replace(",", ""))


def strict_value(text: str) -> Fraction | None:
    """The number right after the last `####` (a `$` may precede it); None when there is none."""
    text = text.replace("−", "-")
    mark = text.rfind(_MARK)
    if mark < 0:
        return None
    found = ANY_NUMBER.match(text, _AFTER_MARK.match(text, mark + len(_MARK)).end())
    return to_number(found.group()) if found else None


def relaxed_value(text: str) -> Fraction | None:
    """The last number anywhere in the text."""
    last = None
    for last in ANY_NUMBER.finditer(text.replace("−", "-")):  # noqa: B007 — the loop keeps the last match
        pass
    return to_number(last.group()) if last else None


def strict_answer(text: str) -> float | None:
    """``strict_value`` as a float, for display and votes (at most MAX_CHARS characters: never overflows)."""
    value = strict_value(text)
    return None if value is None else float(value)


def vote_answer(text: str) -> str | None:
    """The strict answer as the RandOpt vote counts it: '18' for both '#### 18.0' and '#### 18'."""
    value = strict_answer(text)
    return None if value is None else f"{value:.9g}"


def same(a: Fraction | None, b: Fraction | None) -> bool:
    """Both are numbers and exactly equal."""
    return a is not None and b is not None and a == b


def score(completion: str, reference_solution: str) -> dict[str, float]:
    """reward = correct = strict match; `relaxed` = last-number match (reported separately)."""
    gold = strict_value(reference_solution)
    strict = same(strict_value(completion), gold)
    return {"reward": float(strict), "correct": float(strict), "relaxed": float(same(relaxed_value(completion), gold))}
