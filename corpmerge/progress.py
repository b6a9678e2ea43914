"""Progress reporting hook: library code reports, the CLI decides how (or whether) to show it."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, ContextManager, Iterator, Protocol

log = logging.getLogger(__name__)


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


def current() -> Reporter:
    """The installed reporter (to ``tee`` another beside it, and put it back after)."""
    return _reporter


def task(description: str, total: int) -> ContextManager[Advance]:
    """A unit of long work with ``total`` steps: ``with task(...) as advance: advance()``."""
    return _reporter(description, total)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _LogLines:
    """One task's plain progress lines: at the start, at the end, at every 10 % step that comes ``every_s``/10 or more
    after the last line, and whenever ``every_s`` passed without one (a 0.1 s task: two lines, not eleven)."""

    def __init__(self, description: str, total: int, every_s: float) -> None:
        self.description, self.total, self.every_s = description, total, every_s
        self.done, self.status = 0, ""
        self.start = self.last = time.monotonic()
        self.next_tenth = 1
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def advance(self, steps: int = 1, *, status: str | None = None) -> None:
        with self.lock:
            self.done += steps
            self.status = status if status is not None else self.status
            tenths = self.done * 10 // self.total
            if tenths >= self.next_tenth:
                self.next_tenth = tenths + 1
                if self.done >= self.total or time.monotonic() - self.last >= self.every_s / 10:
                    self.line()

    def heartbeat(self) -> None:
        """Runs in a thread until stopped: a line whenever ``every_s`` passed without one (a step may take long)."""
        while True:
            with self.lock:
                remaining = self.last + self.every_s - time.monotonic()
                if remaining <= 0:
                    self.line()
                    remaining = self.every_s
            if self.stopped.wait(remaining):
                return

    def line(self) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        eta = _clock(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        status = f", {self.status}" if self.status else ""
        log.info(
            "%s: %d/%d (%d%%), elapsed %s, eta %s%s",
            self.description,
            self.done,
            self.total,
            100 * self.done // self.total,
            _clock(elapsed),
            eta,
            status,
        )
        self.last = now


def log_reporter(every_s: float = 30.0) -> Reporter:
    """Progress as plain log lines (for logs, pipes and CI): done/total, elapsed and ETA at every 10 % and at least every ``every_s``."""

    @contextmanager
    def reporter(description: str, total: int) -> Iterator[Advance]:
        if total <= 0:
            yield lambda steps=1, *, status=None: None
            return
        lines = _LogLines(description, total, every_s)
        with lines.lock:
            lines.line()
        beat = threading.Thread(target=lines.heartbeat, name=f"progress: {description}", daemon=True)
        beat.start()
        try:
            yield lines.advance
        finally:
            lines.stopped.set()
            beat.join()

    return reporter


def tee(*reporters: Reporter) -> Reporter:
    """Report one task to several reporters at once (bars on the terminal and lines in the log file)."""

    @contextmanager
    def reporter(description: str, total: int) -> Iterator[Advance]:
        with ExitStack() as stack:
            advances = [stack.enter_context(r(description, total)) for r in reporters]

            def advance(steps: int = 1, *, status: str | None = None) -> None:
                for each in advances:
                    each(steps, status=status)

            yield advance

    return reporter
