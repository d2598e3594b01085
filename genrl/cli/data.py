"""`genrl data`: look at and check the embedded shapes world."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from ..worlds import SPLITS
from ..worlds.shapes import ShapesWorld, WorldConfig
from .options import output_file, quiet_option, seed_option


@click.group(no_args_is_help=True)
def data():
    """Inspect the embedded shapes world (captioned procedural videos)."""


@data.command()
@click.option("--out", type=output_file((".gif", ".mp4")), default="grid.gif", show_default=True, help="Grid video to write (.gif or .mp4).")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True, help="Which split to draw clips from.")
@click.option("--num", type=click.IntRange(1, 64), default=12, show_default=True, help="Number of clips in the grid.")
@click.option("--frames", type=click.IntRange(2, 512), default=None, help="Frames per clip (default: the world's training length).")
@click.option("--scale", type=click.IntRange(1, 16), default=4, show_default=True, help="Pixel enlargement of each tile.")
@seed_option
@quiet_option
def preview(out: Path, split: str, num: int, frames: int | None, scale: int, seed: int, quiet: bool):
    """Write a grid of sample clips with their captions.

    \b
    Examples:
      genrl data preview --out grid.gif
      genrl data preview --split test --num 16 --frames 36 --out long.mp4
    """
    from ..io.grid import captioned_grid
    from ..io.video import write_video

    world = ShapesWorld(WorldConfig())
    videos, captions, _ = world.clips(split, range(seed * 10_000, seed * 10_000 + num), frames=frames)
    write_video(out, captioned_grid(videos, captions, cols=4, scale=scale), fps=6)
    if not quiet:
        click.echo(f"wrote {out} ({num} {split} clips, {videos.shape[1]} frames each)")


@data.command()
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Split to draw clips from.")
@click.option("--num", type=click.IntRange(1, 100_000), default=512, show_default=True, help="Number of clips to check.")
@click.option("--frames", type=click.IntRange(2, 512), default=None, help="Frames per clip (default: the training length).")
@click.option("--out", type=output_file((".json",)), default=None, help="Also write the figures as JSON.")
@click.option("--autoencoder", default=None, help="Also probe the clips after a round trip through this autoencoder (name or path).")
@seed_option
@quiet_option
def probe(split: str, num: int, frames: int | None, out: Path | None, autoencoder: str | None, seed: int, quiet: bool):
    """Check the attribute probe on real clips from the generator.

    Prints `prompt_accuracy`: the fraction of clips whose colour, shape, size,
    direction, speed and background are all read back from the pixels.

    \b
    With --autoencoder, the same clips are also encoded and decoded first:
    the accuracy a generator working in that latent space can reach at best.

    \b
    Examples:
      genrl data probe --split test --num 512
      genrl data probe --autoencoder shapes-autoencoder
    """
    from ..models.registry import load_model
    from ..progress import track
    from ..worlds.probe import AttributeProbe

    world, probe_ = ShapesWorld(WorldConfig()), AttributeProbe()
    ae = load_model(autoencoder, kind="autoencoder") if autoencoder else None
    start, hits, ae_hits = time.time(), [], []
    batches = [range(i, min(i + 64, num)) for i in range(0, num, 64)]
    for idx in track(batches, len(batches), "probe", quiet):
        videos, captions, _ = world.clips(split, [seed * 1_000_000 + i for i in idx], frames=frames)
        hits += probe_.prompt_accuracy(videos, captions)[1]
        if ae is not None:
            with torch.no_grad():
                ae_hits += probe_.prompt_accuracy(ae.decode(ae.encode(videos)), captions)[1]
    result = {"split": split, "num_videos": num, "prompt_accuracy": sum(hits) / num, "seconds": round(time.time() - start, 2)}
    if ae is not None:
        result["autoencoder"] = autoencoder
        result["autoencoder_prompt_accuracy"] = sum(ae_hits) / num
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    msg = f"probe on {num} real {split} clips: prompt_accuracy={result['prompt_accuracy']:.4f}"
    if ae is not None:
        msg += f", after {autoencoder}: {result['autoencoder_prompt_accuracy']:.4f}"
    click.echo(f"{msg} ({result['seconds']}s)")
