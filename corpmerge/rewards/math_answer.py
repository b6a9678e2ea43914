"""OlympiadBench-style final answers: last brace-matched \\boxed{…}, normalised comparison."""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*\$*([^\n$]+?)\$*\s*(?:\.|$)", re.IGNORECASE | re.MULTILINE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} (or \\fbox{…}), matching nested braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin : i - 1] if depth == 0 else None


def extract(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = _ANSWER_IS.findall(text)
    return found[-1].strip() if found else None


def _unfrac(s: str) -> str:
    pattern = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
    while pattern.search(s):
        s = pattern.sub(r"(\1)/(\2)", s)
    return s


def normalise(answer: str) -> str:
    s = answer.strip().strip("$").replace("−", "-")
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^{\\circ}", "^\\circ", "\\%", "%", "\\$"):
        s = s.replace(token, "")
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = _unfrac(s)
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def _number(s: str) -> float | None:
    s = s.strip("()") if re.fullmatch(r"\(?-?[\d.]+\)?", s) else s
    m = re.fullmatch(r"\(?(-?[\d.]+)\)?/\(?(-?[\d.]+)\)?", s)
    try:
        if m:
            return float(Fraction(m.group(1)) / Fraction(m.group(2)))
        return float(Fraction(s))
    except (ValueError, ZeroDivisionError):
        return None


def _split_tuple(s: str) -> list[str] | None:
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and "," in s:
        return s[1:-1].split(",")
    if "," in s:
        return s.split(",")
    return None


def equivalent(candidate: str, reference: str) -> bool:
    """Equal after normalisation, numerically within 1e-9, or element-wise for tuples."""
    a, b = normalise(candidate), normalise(reference)
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return abs(x - y) <= 1e-9 * max(1.0, abs(y))
    ta, tb = _split_tuple(a), _split_tuple(b)
    if ta is not None and tb is not None and len(ta) == len(tb):
        return all(equivalent(p, q) for p, q in zip(ta, tb))
    return False


def score(completion: str, references: list[str]) -> tuple[float, bool]:
    answer = extract(completion)
    correct = answer is not None and any(equivalent(answer, ref) for ref in references)
    return float(correct), correct
