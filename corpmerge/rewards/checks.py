"""Split assert tests into *probes* and *checks*, so a program never judges itself.

A probe is a smallest piece of a test that needs the candidate's code: a name the candidate (not the
builtins, the setup code or the standard library) provides, a call of such a thing, or an attribute
of one. Probes run next to the candidate's code and hand back plain data. A check is the rest of
the assert with each probe replaced by a placeholder; the judge evaluates it on the handed-over data.
So ``assert add(1, 2) == 3`` becomes the probe ``add(1, 2)`` and the check ``_corpmerge_probe_0 == 3``:
the comparison, ``math.isclose``, ``set(...)``, ``not`` and the expected values stay with the judge,
and the candidate's process never sees them.
"""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass

PLACEHOLDER = "_corpmerge_probe_{}"
MAX_SOURCE = 64_000  # characters of candidate code we are willing to parse
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__future__"}
_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class UnsupportedTest(ValueError):
    """A test the judge cannot split (not an assert, or candidate code inside a lambda/comprehension)."""


@dataclass(frozen=True)
class SplitTests:
    probes: list[str]  # expressions evaluated in the candidate's process, in order
    names: list[str]  # the placeholder of each probe
    checks: list[str]  # one expression per assert, evaluated by the judge
    modules: list[str]  # standard-library modules the checks use without the setup importing them


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level (``import math`` of a standard module excepted: it binds the same module)."""
    names = {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                if not (isinstance(node, ast.Import) and name == alias.name.split(".")[0] and name in _STDLIB):
                    names.add(name)
        elif isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                names.add(node.id)
        elif not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return names


class _Splitter:
    def __init__(self, known: set[str], candidate: set[str]):
        self.known, self.candidate = known, candidate
        self.probes: list[str] = []
        self.used: set[str] = set()

    def is_candidate(self, name: str) -> bool:
        return name in self.candidate or not (name in self.known or hasattr(builtins, name) or name in _STDLIB)

    def tainted(self, node: ast.AST, local: frozenset = frozenset()) -> bool:
        """Does ``node`` use something of the candidate's (a name not bound inside the test itself)?"""
        if isinstance(node, ast.Name):
            if node.id not in local:
                self.used.add(node.id)
            return node.id not in local and self.is_candidate(node.id)
        if isinstance(node, ast.Lambda):
            args = node.args
            local = local | {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
        elif isinstance(node, _SCOPES):
            local = local | {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        return any([self.tainted(child, local) for child in ast.iter_child_nodes(node)])  # a list: visit every child

    def rewrite(self, node: ast.AST) -> ast.AST:
        if not self.tainted(node):
            return node
        if isinstance(node, (ast.Name, ast.Attribute)) or (isinstance(node, ast.Call) and self.tainted(node.func)):
            name = PLACEHOLDER.format(len(self.probes))
            self.probes.append(ast.unparse(node))
            return ast.copy_location(ast.Name(name, ast.Load()), node)
        if isinstance(node, (*_SCOPES, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            raise UnsupportedTest(f"unsupported test: candidate code inside {type(node).__name__}: {ast.unparse(node)[:80]}")
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(node, field, [self.rewrite(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.rewrite(value))
        return node


def split_tests(setup_code: str, code: str, tests: list[str]) -> SplitTests:
    """Probes and checks of ``tests``; SyntaxError when the candidate's code does not parse."""
    if len(code) > MAX_SOURCE:
        raise SyntaxError("program too long")
    try:
        candidate = bound_names(ast.parse(code))
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        raise SyntaxError(str(error)) from None
    try:
        setup = bound_names(ast.parse(setup_code or ""))
        statements = [stmt for test in tests for stmt in ast.parse(test).body]
    except SyntaxError as error:
        raise UnsupportedTest(f"unsupported test: {error}") from None
    splitter = _Splitter(setup, candidate)
    checks = []
    for stmt in statements:
        if not isinstance(stmt, ast.Assert):
            raise UnsupportedTest(f"unsupported test: not an assert: {ast.unparse(stmt)[:80]}")
        checks.append(ast.unparse(splitter.rewrite(stmt.test)))
    names = [PLACEHOLDER.format(i) for i in range(len(splitter.probes))]
    modules = sorted(n for n in splitter.used if n in _STDLIB and not splitter.is_candidate(n) and n not in setup and not hasattr(builtins, n))
    return SplitTests(splitter.probes, names, checks, modules)
