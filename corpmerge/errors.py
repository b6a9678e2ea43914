"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class CorpmergeError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2
