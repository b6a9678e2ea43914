"""OlympiadBench-style final answers: last brace-matched \\boxed{…}, normalised comparison.

Hostile text is cheap here: extraction scans at most MAX_ANSWER characters past the last
``\\boxed{``, numbers are exact fractions of at most MAX_DIGITS digits with exponents up to
MAX_EXPONENT (nothing else is evaluated: ``10^{…}`` stays text), tuples nest at most MAX_NESTING
deep, and no input string makes these functions raise.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_ANSWER = 1000  # characters of a candidate answer
MAX_DIGITS = 400
MAX_EXPONENT = 1000
MAX_NESTING = 16
TOLERANCE = Fraction(1, 10**9)  # relative, for numbers

_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b|:)", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_TEXT = re.compile(r"\\text\{([^{}]*)\}")
_SPACE = re.compile(r"\s+")
_DECIMAL = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]*))?(?:[eE](?P<exp>[-+]?[0-9]+))?|\.(?P<only>[0-9]+)")
_BRACES = {"{": 1, "}": -1}
_DROPPED = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^{\\circ}", "^\\circ", "\\%", "%", "\\$")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} (or \\fbox{…}), matching nested braces; None if it does not
    close within MAX_ANSWER characters."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    begin = text.index("{", start) + 1
    depth = 1
    for i in range(begin, min(len(text), begin + MAX_ANSWER + 1)):
        depth += _BRACES.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def stated_answer(text: str) -> str | None:
    """What follows the last "answer is" / "answer:", up to the end of its line or sentence."""
    last = None
    for last in _ANSWER_IS.finditer(text):  # noqa: B007 — the loop keeps the last match
        pass
    if last is None:
        return None
    rest = text[last.end() : last.end() + MAX_ANSWER + 1].lstrip(" \t\r\n:")
    line = rest.split("\n", 1)[0]
    answer = line.split(". ", 1)[0].strip().removesuffix(".").strip("$ \t")
    return answer or None


def extract(text: str) -> str | None:
    """The last \\boxed{…} content, else the stated answer; None when there is neither."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else stated_answer(text)


def _unfrac(s: str) -> str:
    """\\frac{a}{b} (and \\dfrac, \\tfrac) → (a)/(b), innermost first."""
    while True:  # one nesting level per pass: quadratic only in the (bounded) answer length
        s, count = _FRAC.subn(r"(\1)/(\2)", s)
        if not count:
            return s


def normalise(answer: str) -> str:
    """Canonical text of an answer: without $, \\left/\\right, spacing, degrees, percent signs,
    \\text{} wrappers and whitespace, with fractions as (a)/(b)."""
    s = answer.strip().strip("$").replace("−", "-")
    for token in _DROPPED:
        s = s.replace(token, "")
    s = _TEXT.sub(r"\1", s)
    s = _unfrac(s)
    s = _SPACE.sub("", s)
    return s.rstrip(".")


def vote_answer(text: str) -> str | None:
    """The extracted answer, normalised, as the RandOpt vote counts it."""
    answer = extract(text)
    return None if answer is None else normalise(answer)


def _decimal(s: str) -> Fraction | None:
    """'12', '1.5', '.5', '2e-3' exactly; None for anything else or beyond the digit/exponent caps."""
    m = _DECIMAL.fullmatch(s)
    if m is None:
        return None
    whole, frac, exp = m["int"] or "", m["frac"] or m["only"] or "", m["exp"] or "0"
    if len(whole) + len(frac) > MAX_DIGITS or len(exp) > 6 or abs(int(exp)) > MAX_EXPONENT:
        return None
    shift = int(exp) - len(frac)
    mantissa = int(whole + frac)
    return Fraction(mantissa * 10**shift) if shift >= 0 else Fraction(mantissa, 10**-shift)


def _signed(s: str) -> Fraction | None:
    """A decimal with an optional minus sign, in or out of one pair of parentheses: '-2', '(-2)', '-(2)'."""
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
        if s.startswith("-"):
            sign, s = -sign, s[1:]
    value = _decimal(s)
    return None if value is None else sign * value


def _number(s: str) -> Fraction | None:
    """Exact value of a decimal or of a ratio of two ('(1)/(2)' is what \\frac{1}{2} becomes)."""
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    if s.startswith("(") and _closes_at_end(s):
        s = s[1:-1]
    parts = s.split("/")
    if len(parts) > 2:
        return None
    values = [_signed(p) for p in parts]
    if any(v is None for v in values) or (len(values) == 2 and values[1] == 0):
        return None
    return sign * (values[0] / values[1] if len(values) == 2 else values[0])


def _closes_at_end(s: str) -> bool:
    """The bracket opening ``s`` closes at its last character and not before."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if depth <= 0:
            return i == len(s) - 1
    return False


def _items(s: str) -> tuple[str, list[str]] | None:
    """(brackets, top-level items) of a tuple or interval: '[0,1)' → ('[)', ['0', '1']); a bare
    '1,2' counts as '(1,2)'. None when ``s`` has no top-level comma."""
    brackets = "()"
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closes_at_end(s):
        brackets, s = s[0] + s[-1], s[1:-1]
    items, depth, begin = [], 0, 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            items.append(s[begin:i])
            begin = i + 1
    items.append(s[begin:])
    return (brackets, items) if len(items) > 1 else None


def _same(a: str, b: str, nesting: int = 0) -> bool:
    """Normalised answers: equal text, numbers within TOLERANCE (relative), or tuples/intervals
    with the same brackets and equivalent items."""
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return abs(x - y) <= TOLERANCE * max(1, abs(y))
    if nesting >= MAX_NESTING:
        return False
    ta, tb = _items(a), _items(b)
    if ta is None or tb is None or ta[0] != tb[0] or len(ta[1]) != len(tb[1]):
        return False
    return all(_same(p, q, nesting + 1) for p, q in zip(ta[1], tb[1]))


def equivalent(candidate: str, reference: str) -> bool:
    """Equal after normalisation, numerically within TOLERANCE, or item-wise for tuples and
    intervals of the same bracket types; candidates longer than MAX_ANSWER never are."""
    if len(candidate) > MAX_ANSWER:
        return False
    return _same(normalise(candidate), normalise(reference))


def score(completion: str, references: list[str]) -> tuple[float, bool]:
    answer = extract(completion)
    correct = answer is not None and any(equivalent(answer, ref) for ref in references)
    return float(correct), correct
