"""Errors that the CLI reports in one line with exit code 2 (bad usage / bad input)."""


class UsageError(Exception):
    """Bad input from the user: a config, an argument or a file. Exit code 2, no traceback."""
