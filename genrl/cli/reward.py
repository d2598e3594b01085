"""`genrl train-reward`: train the shapes reward model on corrupted pairs (the recipe lives in rewards/)."""

from __future__ import annotations

import click

from ..registry import RECIPES
from .options import config_command, quiet_option

RECIPE = RECIPES.get("train-reward")


@config_command(RECIPE.config, name="train-reward")
@quiet_option
def train_reward(cfg, quiet: bool):
    """Train the shapes reward model (VQ, MQ, TA) with Bradley–Terry-with-ties.

    Pairs are clean vs corrupted clips: blur/noise/blockiness for VQ,
    jitter/frozen frames/teleports/reversal for MQ, wrong attributes for TA, at
    graded severities with ties. Held-out pair accuracy per axis goes to
    metrics.jsonl at every sample step and at the end.

    With reward.generated.generators set, part of every batch are pairs of
    the generators' own clips graded by the attribute probe (how many frames
    hold one coherent object, the named motion, the named looks), and
    reward.init starts from trained weights; the pool's ranking AUCs are
    logged next to the pair accuracies.

    \b
    Examples:
      genrl train-reward --config configs/reward_shapes.yaml
      genrl train-reward --config configs/reward_student_clips.yaml
    """
    summary = RECIPE.run(cfg, quiet)
    if summary["is_main"]:
        click.echo(f"reward run {cfg.out_dir}: " + ", ".join(f"{k}={v:.3f}" for k, v in summary["accuracy"].items()))
