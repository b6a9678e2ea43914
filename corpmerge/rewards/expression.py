"""A safe evaluator for `+ - * / ( )` over integers (exact rational arithmetic; never `eval`).

Bounded for hostile text: at most MAX_TOKENS tokens (scanning stops there), integer literals of at
most MAX_DIGITS digits (checked before conversion) and parentheses/unary minus nested at most
MAX_NESTING deep; anything else is an ExpressionError, the only exception ``evaluate`` raises.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TOKEN = re.compile(r"\s*(?:([0-9]+)|(.))", re.DOTALL)
MAX_TOKENS = 200
MAX_DIGITS = 12
MAX_NESTING = 50


class ExpressionError(ValueError):
    """Not an expression of integers with + - * / and parentheses (or beyond the bounds)."""


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        number, op = match.groups()
        if number:
            if len(number) > MAX_DIGITS:
                raise ExpressionError("number too long")
            tokens.append(number)
        elif op in "+-*/()":
            tokens.append(op)
        elif op.strip():
            raise ExpressionError(f"unexpected character {op!r}")
        if len(tokens) > MAX_TOKENS:
            raise ExpressionError("expression too long")
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := int | '(' expr ')' | '-' factor."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.numbers, self.nesting = tokens, 0, [], 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("unexpected end of expression")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ExpressionError("division by zero")
            else:
                value /= rhs
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token in ("(", "-"):
            self.nesting += 1
            if self.nesting > MAX_NESTING:
                raise ExpressionError("expression nested too deeply")
            value = self.expr() if token == "(" else -self.factor()
            if token == "(" and self.take() != ")":
                raise ExpressionError("missing ')'")
            self.nesting -= 1
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"unexpected {token!r}")


def evaluate(text: str) -> tuple[Fraction, list[int]]:
    """Value of the expression and the integer literals it uses, in order."""
    parser = _Parser(tokenize(text))
    if not parser.tokens:
        raise ExpressionError("empty expression")
    value = parser.expr()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r}")
    return value, parser.numbers
