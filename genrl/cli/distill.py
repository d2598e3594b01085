"""`genrl distill`: turn the bidirectional teacher into a streaming few-step student (the recipe lives in distill/)."""

from __future__ import annotations

from pathlib import Path

import click

from ..registry import RECIPES
from .options import config_command, quiet_option

RECIPE = RECIPES.get("distill")
DistillConfig = RECIPE.config


@config_command(DistillConfig)
@quiet_option
def distill(cfg, quiet: bool):
    """Distil the teacher into a streaming student (ODE init, DMD, Stream-R1).

    Writes a run folder; re-running the same command resumes from its latest
    checkpoint. Works under `accelerate launch`. Teacher, student and critic may
    be shapes models or local diffusers Wan2.1 folders.

    \b
    Examples:
      genrl distill --config configs/ode_init.yaml
      genrl distill --config configs/dmd.yaml student=runs/ode_init
      genrl distill --config configs/stream_r1.yaml dmd.critic_ratio=2 train.steps=200
      genrl distill --config configs/dmd.yaml train.steps=400 train.val_every=50   # best step on val -> runs/dmd/best
      genrl distill --config configs/stream_r1_wan.yaml teacher=/models/Wan2.1-T2V-1.3B-Diffusers
    """
    summary = RECIPE.run(cfg, quiet)
    if not summary["is_main"]:  # other ranks of `accelerate launch` stop here
        return
    last = summary["last"]
    click.echo(f"{cfg.method} run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in list(last.items())[:4]))
    if b := summary["best"]:  # train.val_every: the step chosen on val
        where = Path(cfg.out_dir) / "best"
        click.echo(f"best on val: step {b['step']} ({b['key']}={b['value']:.4f}), exported to {where}")
