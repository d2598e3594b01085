"""Options and parameter types shared by the commands."""

from __future__ import annotations

from pathlib import Path

import click

seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same numbers.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars; only the final summary line.")


class OutputFile(click.ParamType):
    """A path to write, with one of the allowed suffixes; its folder is created."""

    name = "file"

    def __init__(self, suffixes: tuple[str, ...]):
        self.suffixes = suffixes

    def convert(self, value, param, ctx):
        path = Path(value)
        if path.suffix.lower() not in self.suffixes:
            self.fail(f"{value!r} must end in {' or '.join(self.suffixes)}", param, ctx)
        if path.exists() and path.is_dir():
            self.fail(f"{value!r} is a folder, expected a file", param, ctx)
        return path


def output_file(suffixes: tuple[str, ...]) -> OutputFile:
    return OutputFile(suffixes)
