"""Progress reporting hook: library code reports, the CLI decides how (or whether) to show it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Protocol


class Advance(Protocol):
    def __call__(self, steps: int = 1, *, status: str | None = None) -> None: ...


Reporter = Callable[[str, int], ContextManager[Advance]]


@contextmanager
def _silent(description: str, total: int) -> Iterator[Advance]:
    yield lambda steps=1, *, status=None: None


_reporter: Reporter = _silent


def set_reporter(reporter: Reporter | None) -> None:
    """Install a reporter (the CLI's progress bars); ``None`` silences progress."""
    global _reporter
    _reporter = reporter or _silent


def task(description: str, total: int) -> ContextManager[Advance]:
    """A unit of long work with ``total`` steps: ``with task(...) as advance: advance()``."""
    return _reporter(description, total)
