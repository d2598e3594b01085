"""Errors that the CLI reports in one line: exit code 2 for bad usage / bad input, 1 for failed work."""


class UsageError(Exception):
    """Bad input from the user: a config, an argument or a file. Exit code 2, no traceback."""


class TrainingDiverged(Exception):
    """A run whose losses or gradients stayed non-finite: exit code 1, last good checkpoint intact."""
