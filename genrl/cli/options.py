"""Options and parameter types shared by the commands."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from ..errors import UsageError

seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same numbers.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars; only the final summary line.")


def timesteps_option(help: str):
    """``--timesteps T1,T2,...``: a streaming student's per-chunk timesteps, parsed and checked
    (:func:`genrl.generation.parse_timesteps`) into a list, or None when not given."""

    def parse(ctx, param, value: str | None) -> list[float] | None:
        from ..generation import parse_timesteps

        if value is None:
            return None
        try:
            return parse_timesteps(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return click.option("--timesteps", default=None, metavar="T1,T2,...", callback=parse, help=help)


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (created if need be), or None. Leaves no trace:
    folders it had to create for the probe are removed again. Safe when several processes of one
    launch check the same folder at once: a folder another one made (or removed) meanwhile is no problem."""
    folder = Path(folder)
    for attempt in range(3):
        created = []
        try:
            for parent in [*reversed(folder.parents), folder]:
                if not parent.exists():
                    try:
                        parent.mkdir()
                        created.append(parent)
                    except FileExistsError:  # another process made it between the look and the mkdir
                        pass
                if not parent.is_dir():
                    return f"{parent} is a file, not a folder"
            probe = folder / f".genrl-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return None
        except FileNotFoundError as e:  # another process removed a folder it had made for its own probe
            if attempt == 2:
                return e.strerror or str(e)
        except OSError as e:
            return e.strerror or str(e)
        finally:
            for p in reversed(created):
                try:
                    p.rmdir()
                except OSError:  # not empty: another process's probe or run is in it
                    pass
    return None


def check_out_dir(cfg) -> None:
    """Refuse a config whose ``out_dir`` cannot be written, before any work starts."""
    out = getattr(cfg, "out_dir", None)
    if out and (problem := writable_problem(Path(out))):
        raise UsageError(f"config key 'out_dir' is {out!r}, which cannot be written: {problem}")


class OutputFile(click.ParamType):
    """A path to write, with one of the allowed suffixes, in a folder that can be written."""

    name = "file"

    def __init__(self, suffixes: tuple[str, ...]):
        self.suffixes = suffixes

    def convert(self, value, param, ctx):
        path = Path(value)
        if self.suffixes and path.suffix.lower() not in self.suffixes:
            self.fail(f"{value!r} must end in {' or '.join(self.suffixes)}", param, ctx)
        if path.exists() and path.is_dir():
            self.fail(f"{value!r} is a folder, expected a file", param, ctx)
        if problem := writable_problem(path.parent):
            self.fail(f"{value!r} cannot be written: {problem}", param, ctx)
        return path


def output_file(suffixes: tuple[str, ...] = ()) -> OutputFile:
    """A file to write (any suffix when ``suffixes`` is empty), checked writable before work starts."""
    return OutputFile(suffixes)


class OutputFolder(click.ParamType):
    """A folder to write into, checked writable before work starts."""

    name = "folder"

    def convert(self, value, param, ctx):
        path = Path(value)
        if problem := writable_problem(path):
            self.fail(f"{value!r} cannot be written: {problem}", param, ctx)
        return path


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

                click.echo(to_yaml(cfg, comments=True), nl=False)
                return 0
            check_out_dir(cfg)
            return fn(cfg, **kwargs)

        return click.command(name=name, context_settings={"show_default": True})(command)

    return wrap
