"""Options and parameter types shared by the commands."""

from __future__ import annotations

import functools
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


def config_command(schema: type, name: str | None = None):
    """Decorator: a click command taking ``--config FILE`` and ``key=value`` overrides,
    handing the callback a typed config built from ``schema``."""
    from ..config import load_config

    def wrap(fn):
        @click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
        @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML recipe (see configs/).")
        @click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
        @functools.wraps(fn)
        def command(config_path, overrides, print_config, **kwargs):
            cfg = load_config(schema, config_path, overrides)
            if print_config:
                from ..config import to_yaml

                click.echo(to_yaml(cfg), nl=False)
                return 0
            return fn(cfg, **kwargs)

        return click.command(name=name, context_settings={"show_default": True})(command)

    return wrap
