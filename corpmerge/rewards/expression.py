"""A safe evaluator for `+ - * / ( )` over integers (exact rational arithmetic; never `eval`)."""

from __future__ import annotations

import re
from fractions import Fraction

_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")
MAX_TOKENS = 200


class ExpressionError(ValueError):
    """Not an expression of integers with + - * / and parentheses."""


def tokenize(text: str) -> list[str]:
    tokens = []
    for number, op in _TOKEN.findall(text.strip()):
        if number:
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
        self.tokens, self.pos, self.numbers = tokens, 0, []

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
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise ExpressionError("missing ')'")
            return value
        if token == "-":
            return -self.factor()
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
