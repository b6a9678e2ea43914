"""A hang guard for tests: interrupt a call that runs far longer than it should (a timeout, not a timing assertion)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block if it is still running after ``seconds`` (main thread, POSIX)."""

    def fire(signum, frame):  # noqa: ANN001
        raise TimeoutError(f"still running after {seconds} s: treated as a hang")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
