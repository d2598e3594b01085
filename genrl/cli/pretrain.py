"""`genrl pretrain`: train the shapes autoencoder or the flow-matching teacher."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ..errors import UsageError
from ..methods.autoencoder import AutoencoderMethodConfig
from ..methods.common import OptimConfig
from ..methods.flow import FlowMethodConfig
from ..train.trainer import ParallelConfig, TrainConfig
from ..worlds.shapes import WorldConfig
from .options import config_command, quiet_option

METHODS = ("flow", "autoencoder")


@dataclass
class PretrainConfig:
    """`genrl pretrain` recipe."""

    method: str = "flow"
    """What to train: 'flow' (the text-to-video teacher) or 'autoencoder' (its latent space)."""
    out_dir: str = "runs/pretrain"
    """Run folder (config, metrics.jsonl, samples/, checkpoints/, model.safetensors)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    flow: FlowMethodConfig = field(default_factory=FlowMethodConfig)
    autoencoder: AutoencoderMethodConfig = field(default_factory=AutoencoderMethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


def build_method(cfg: PretrainConfig):
    from ..methods.autoencoder import AutoencoderMethod
    from ..methods.flow import FlowMethod
    from ..worlds.shapes import ShapesWorld

    if cfg.method not in METHODS:
        raise UsageError(f"config key 'method' is {cfg.method!r}; valid: {', '.join(METHODS)}")
    world = ShapesWorld(cfg.world)
    if cfg.method == "flow":
        return FlowMethod(cfg.flow, cfg.optim, world, cfg.train.seed)
    return AutoencoderMethod(cfg.autoencoder, cfg.optim, world, cfg.train.seed)


@config_command(PretrainConfig)
@quiet_option
def pretrain(cfg: PretrainConfig, quiet: bool):
    """Pretrain the teacher (flow matching) or its autoencoder on the shapes world.

    Writes a run folder; re-running the same command resumes from its latest
    checkpoint. Works under `accelerate launch`.

    \b
    Examples:
      genrl pretrain --config configs/autoencoder_shapes.yaml
      genrl pretrain --config configs/teacher_shapes.yaml train.steps=20000
      genrl pretrain --config configs/teacher_shapes.yaml out_dir=runs/t2 optim.lr=1e-4
      genrl pretrain --config configs/teacher_shapes_lownoise.yaml   # fine-tune runs/teacher at low noise
    """
    from ..train.trainer import Trainer, seed_everything

    seed_everything(cfg.train.seed)  # model initialisation is part of the run's randomness
    method = build_method(cfg)
    trainer = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet, parallel=cfg.parallel)
    last = trainer.fit()
    click.echo(f"{cfg.method} run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
