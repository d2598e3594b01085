"""`genrl report`: rebuild a run folder's report.md and plots, during the run or after it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError


@click.command(name="report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
def report(runs):
    """Rebuild report.md and plots/ of each RUN folder from its metrics.jsonl, eval*.json and samples.

    Every training command writes the report when it ends; this brings it up to date at any
    time, e.g. while a run is still training (it reads what the run has logged so far and
    changes nothing else), or for a sweep's runs at once.

    \b
    Examples:
      genrl report runs/stream_r1
      genrl report runs/sweep/*/seed_*
    """
    from ..report import write_report

    folders = [Path(r) for r in runs]
    for f in folders:  # every folder checked before any report is written
        if not (f / "metrics.jsonl").is_file():
            raise UsageError(f"{f}: not a run folder (no metrics.jsonl); give folders that training commands wrote")
    for f in folders:
        path = write_report(f)
        plots = sorted((f / "plots").glob("*.png")) if (f / "plots").is_dir() else []
        click.echo(f"wrote {path} ({len(plots)} plot(s))")
