"""Progress bars and one-line summaries shared by every long-running command."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def progress_bar(total: int, description: str, quiet: bool = False):
    """A rich progress bar with steps, ETA and a free-text status field.

    Yields ``advance(n=1, status="")``. Silent when ``quiet`` or stderr is not a terminal
    and no status is given (logs stay readable in CI).
    """
    if quiet:
        yield lambda n=1, status="": None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        every = max(1, total // 10)
        state = {"n": 0}

        def plain(n: int = 1, status: str = "") -> None:
            state["n"] += n
            if state["n"] % every == 0 or state["n"] == total:
                print(f"{description}: {state['n']}/{total} {status}", file=sys.stderr, flush=True)

        yield plain
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str = "") -> None:
            bar.update(task, advance=n, status=status)

        yield advance


def track(items: Iterable[T], total: int, description: str, quiet: bool = False) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress_bar(total, description, quiet) as advance:
        for x in items:
            yield x
            advance()
