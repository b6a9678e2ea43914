"""User-facing errors: the CLI prints them as one line and exits with code 2; tracebacks go to the run's log only."""

import logging

FILE_ONLY = "corpmerge_file_only"  # a log record's attribute: for the run's log file, not the terminal


class CorpmergeError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type name when it has no message), at most ``limit`` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def log_traceback(logger: logging.Logger, message: str, *args: object) -> None:
    """Record the exception being handled, with its traceback, in the run's log file only (the terminal shows one line)."""
    logger.info(message, *args, exc_info=True, extra={FILE_ONLY: True})
