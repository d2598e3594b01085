"""`genrl train-reward`: train the shapes reward model on corrupted pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ..methods.common import OptimConfig
from ..train.trainer import TrainConfig
from ..worlds.shapes import WorldConfig
from .options import config_command, quiet_option


def _reward_config():
    from rewards.training import RewardMethodConfig

    return RewardMethodConfig


_RM = _reward_config()


@dataclass
class TrainRewardConfig:
    """`genrl train-reward` recipe."""

    out_dir: str = "runs/reward"
    """Run folder."""
    world: WorldConfig = field(default_factory=WorldConfig)
    reward: _RM = field(default_factory=_RM)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@config_command(TrainRewardConfig, name="train-reward")
@quiet_option
def train_reward(cfg: TrainRewardConfig, quiet: bool):
    """Train the shapes reward model (VQ, MQ, TA) with Bradley–Terry-with-ties.

    Pairs are clean vs corrupted clips: blur/noise/blockiness for VQ,
    jitter/frozen frames/teleports/reversal for MQ, wrong attributes for TA, at
    graded severities with ties. Held-out pair accuracy per axis goes to
    metrics.jsonl at every sample step and at the end.

    \b
    Example:
      genrl train-reward --config configs/reward_shapes.yaml
    """
    from rewards.training import RewardMethod

    from ..train.trainer import Trainer, read_metrics, seed_everything
    from ..worlds.shapes import ShapesWorld

    seed_everything(cfg.train.seed)
    method = RewardMethod(cfg.reward, cfg.optim, ShapesWorld(cfg.world), cfg.train.seed)
    Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet).fit()
    acc = [r for r in read_metrics(cfg.out_dir) if "vq_accuracy" in r][-1]
    click.echo(f"reward run {cfg.out_dir}: " + ", ".join(f"{k}={v:.3f}" for k, v in acc.items() if "accuracy" in k))
