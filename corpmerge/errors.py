"""User-facing errors: the CLI prints them as one line and exits with code 2.

An unexpected exception (anything but a ``CorpmergeError``) that corpmerge reduces to one line
keeps its full traceback in the log: ``log_traceback`` writes it to the ``corpmerge.traceback``
logger, which reaches a run's ``corpmerge.log`` always and stderr only with ``-v``.
"""

from __future__ import annotations

import logging
import signal
import traceback
from typing import Any

TRACEBACK_LOGGER = "corpmerge.traceback"


class CorpmergeError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM), raised in the main thread so that cleanup runs as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


def excerpt(value: Any, limit: int = 60) -> str:
    """``value`` as a short one-line quotation: control characters escaped, long text cut with …, containers by size."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    text = (value if isinstance(value, str) else repr(value))[: limit + 1].encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for 1: "1 seed", "3 seeds", "0 entries" (``plural``: an irregular plural)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """An exception's first line (its type name when it has no message), at most ``limit`` characters (None: all)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def traceback_text(exc: BaseException) -> str | None:
    """The full traceback of an unexpected exception; None for a ``CorpmergeError`` (its line says it all)."""
    if isinstance(exc, CorpmergeError):
        return None
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def log_traceback(where: str, exc: BaseException | str | None) -> None:
    """Keep a traceback (an exception, or the text of one from another process) in the log, saying ``where``."""
    text = traceback_text(exc) if isinstance(exc, BaseException) else exc
    if text:
        logging.getLogger(TRACEBACK_LOGGER).error("traceback (%s):\n%s", where, text)
