"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class CorpmergeError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type name when it has no message), at most ``limit`` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
