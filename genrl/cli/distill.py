"""`genrl distill`: turn the bidirectional teacher into a streaming few-step student."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..errors import UsageError
from ..methods.common import OptimConfig
from ..models.video_model import StreamingConfig
from ..train.trainer import TrainConfig
from ..worlds.shapes import WorldConfig
from .options import config_command, quiet_option

METHODS = ("ode_init", "dmd")


def _distill_configs():
    from distill.dmd import DMDConfig
    from distill.ode_init import ODEInitConfig

    return DMDConfig, ODEInitConfig


_DMD, _ODE = _distill_configs()


@dataclass
class DistillConfig:
    """`genrl distill` recipe."""

    method: str = "dmd"
    """'ode_init' (regress teacher ODE pairs) or 'dmd' (distribution matching)."""
    out_dir: str = "runs/distill"
    """Run folder (config, metrics.jsonl, samples/, checkpoints/, model.safetensors)."""
    teacher: str = "shapes-teacher"
    """Teacher model: built-in name or path."""
    student: str = ""
    """Student initial weights: name or path (e.g. an ode_init run); empty = the teacher's weights."""
    streaming: StreamingConfig = field(default_factory=lambda: StreamingConfig(enabled=True))
    world: WorldConfig = field(default_factory=WorldConfig)
    ode: _ODE = field(default_factory=_ODE)
    dmd: _DMD = field(default_factory=_DMD)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=[0.0, 0.999], warmup_steps=10))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=[0.0, 0.999], warmup_steps=10))
    train: TrainConfig = field(default_factory=TrainConfig)


def build_models(cfg: DistillConfig):
    from ..models.registry import load_model
    from ..models.video_model import VideoModel

    teacher = load_model(cfg.teacher, kind="video_model")
    base = load_model(cfg.student, kind="video_model") if cfg.student else teacher
    student = VideoModel(dataclasses.replace(base.cfg, streaming=dataclasses.replace(cfg.streaming, enabled=True)))
    student.load_state_dict(base.state_dict())
    return student, teacher


def build_method(cfg: DistillConfig, quiet: bool):
    from distill.dmd import DMDMethod
    from distill.ode_init import ODEInitMethod

    from ..worlds.shapes import ShapesWorld

    if cfg.method not in METHODS:
        raise UsageError(f"config key 'method' is {cfg.method!r}; valid: {', '.join(METHODS)}")
    if cfg.world.frames % cfg.streaming.local_frames and cfg.world.frames > cfg.streaming.local_frames:
        raise UsageError("world.frames longer than streaming.local_frames must be a multiple of it")
    world = ShapesWorld(cfg.world)
    student, teacher = build_models(cfg)
    if cfg.method == "ode_init":
        return ODEInitMethod(cfg.ode, student, teacher, world, cfg.optim, cfg.train.seed, Path(cfg.out_dir), quiet)
    return DMDMethod(cfg.dmd, student, teacher, world, cfg.optim, cfg.critic_optim, cfg.train.seed)


@config_command(DistillConfig)
@quiet_option
def distill(cfg: DistillConfig, quiet: bool):
    """Distil the teacher into a streaming student (ODE init, then DMD).

    Writes a run folder; re-running the same command resumes from its latest
    checkpoint. Works under `accelerate launch`.

    \b
    Examples:
      genrl distill --config configs/ode_init.yaml
      genrl distill --config configs/dmd.yaml student=runs/ode_init
      genrl distill --config configs/dmd.yaml dmd.critic_ratio=2 train.steps=200
    """
    from ..train.trainer import Trainer, seed_everything

    seed_everything(cfg.train.seed)
    method = build_method(cfg, quiet)
    last = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet).fit()
    click.echo(f"{cfg.method} run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in list(last.items())[:4]))
