"""The `genrl` command line: parse -> build -> run -> close, one module per command."""

from .main import cli, main

__all__ = ["cli", "main"]
