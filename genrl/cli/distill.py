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

METHODS = ("ode_init", "dmd", "stream_r1")


def _distill_configs():
    from distill.dmd import DMDConfig
    from distill.ode_init import ODEInitConfig
    from distill.stream_r1 import StreamR1Config

    return DMDConfig, ODEInitConfig, StreamR1Config


_DMD, _ODE, _SR1 = _distill_configs()


@dataclass
class ArchConfig:
    """Architectures `genrl plan` assumes for roles whose folders are not on this machine."""

    teacher: str = ""
    """Teacher architecture (wan2.1-t2v-1.3b, wan2.1-t2v-14b)."""
    student: str = ""
    """Student architecture; empty = the teacher's."""
    critic: str = ""
    """Critic architecture; empty = the teacher's."""
    reward: str = ""
    """Reward model architecture (videoreward-qwen2-vl-2b)."""


@dataclass
class DistillConfig:
    """`genrl distill` recipe."""

    method: str = "dmd"
    """'ode_init' (regress teacher ODE pairs), 'dmd' (distribution matching) or 'stream_r1' (reward-weighted DMD)."""
    out_dir: str = "runs/distill"
    """Run folder (config, metrics.jsonl, samples/, checkpoints/, model.safetensors)."""
    teacher: str = "shapes-teacher"
    """Teacher model: built-in name, path, or a diffusers Wan2.1 folder."""
    student: str = ""
    """Student initial weights: name or path (an ode_init run; for Wan, a folder with transformer/); empty = the teacher's."""
    critic: str = ""
    """Critic (fake score) initial weights, same forms as student; empty = a copy of the teacher."""
    prompts: str = ""
    """Prompt file (one per line) to train on instead of the shapes world's captions (real models)."""
    height: int = 0
    """Frame height for Wan2.1 models (0 = 480); the shapes models are fixed at 32x32."""
    width: int = 0
    """Frame width for Wan2.1 models (0 = 832)."""
    ode_init_first: bool = False
    """Run an ODE-init stage (ode.stage_steps steps) into {out_dir}/ode_init first and start from it."""
    streaming: StreamingConfig = field(default_factory=lambda: StreamingConfig(enabled=True))
    world: WorldConfig = field(default_factory=WorldConfig)
    ode: _ODE = field(default_factory=_ODE)
    dmd: _DMD = field(default_factory=_DMD)
    stream_r1: _SR1 = field(default_factory=_SR1)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=[0.0, 0.999], warmup_steps=10))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=[0.0, 0.999], warmup_steps=10))
    train: TrainConfig = field(default_factory=TrainConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    eval_num: int = 0
    """After training, evaluate the exported student on this many test prompts into {out_dir}/eval.json
    (prompt accuracy, reward z-scores, frames/s; shown in report.md). 0 = skip."""


def _load(cfg: DistillConfig, name: str, like=None):
    """A video model by name or path; Wan folders get the recipe's size and share ``like``'s frozen parts."""
    from ..models.registry import load_model
    from ..models.wan import WanVideoModel, is_wan_folder, load_wan

    size = {k: v for k, v in (("height", cfg.height), ("width", cfg.width)) if v}
    if isinstance(like, WanVideoModel) and is_wan_folder(name):
        return load_wan(name, {"pipeline": like.cfg.pipeline, **size}, shared=like.shared)
    return load_model(name, kind="video_model", overrides=size)


def build_models(cfg: DistillConfig):
    """(student, teacher, critic or None): the student is a streaming copy of its initial weights."""
    teacher = _load(cfg, cfg.teacher)
    base = _load(cfg, cfg.student, teacher) if cfg.student else teacher
    critic = _load(cfg, cfg.critic, teacher) if cfg.critic else None
    return base.streaming_copy(cfg.streaming), teacher, critic


def build_world(cfg: DistillConfig):
    from ..worlds.prompts import PromptFile
    from ..worlds.shapes import ShapesWorld

    return PromptFile(cfg.prompts, cfg.world.frames) if cfg.prompts else ShapesWorld(cfg.world)


def build_method(cfg: DistillConfig, quiet: bool):
    from distill.dmd import DMDMethod
    from distill.ode_init import ODEInitMethod
    from distill.stream_r1 import StreamR1Method

    if cfg.method not in METHODS:
        raise UsageError(f"config key 'method' is {cfg.method!r}; valid: {', '.join(METHODS)}")
    if cfg.prompts and cfg.eval_num:
        raise UsageError("eval_num measures students against the shapes world's probe; set eval_num=0 with a prompt file")
    world = build_world(cfg)
    student, teacher, critic = build_models(cfg)
    frames = student.latent_frames(cfg.world.frames)
    if frames % cfg.streaming.local_frames and frames > cfg.streaming.local_frames:
        raise UsageError("world.frames (in latent frames) longer than streaming.local_frames must be a multiple of it")
    if cfg.method == "ode_init":
        return ODEInitMethod(cfg.ode, student, teacher, world, cfg.optim, cfg.train.seed, Path(cfg.out_dir), quiet)
    args = (cfg.dmd, student, teacher, world, cfg.optim, cfg.critic_optim, cfg.train.seed)
    if cfg.method == "stream_r1":
        return StreamR1Method(cfg.stream_r1, *args, critic=critic)
    return DMDMethod(*args, critic=critic)


def ode_init_stage(cfg: DistillConfig) -> DistillConfig:
    """The ODE-init stage that precedes ``cfg`` when ``ode_init_first`` is set."""
    train = dataclasses.replace(cfg.train, steps=cfg.ode.stage_steps, sample_every=0,
                                checkpoint_every=max(1, cfg.ode.stage_steps // 3))
    optim = OptimConfig(lr=cfg.ode.stage_lr, betas=[0.9, 0.999], warmup_steps=min(20, cfg.ode.stage_steps))
    return dataclasses.replace(cfg, method="ode_init", out_dir=str(Path(cfg.out_dir) / "ode_init"),
                               ode_init_first=False, train=train, optim=optim)


def final_eval(cfg: DistillConfig, quiet: bool) -> dict:
    """Evaluate the run's exported student on the test split; write eval.json and refresh the report."""
    from ..evaluation import evaluate_run
    from ..report import write_report

    sr1 = cfg.stream_r1  # the training reward of a Stream-R1 run; for DMD the same model, for comparison
    rewards = [sr1.reward_weights if sr1.reward == "shapes" else sr1.reward]
    report = evaluate_run(cfg.out_dir, cfg.eval_num, rewards, quiet=quiet)
    write_report(cfg.out_dir)
    click.echo(f"eval on {cfg.eval_num} test prompts: prompt_accuracy={report['prompt_accuracy']:.4f} "
               + " ".join(f"{k}={v:+.3f}" for k, v in report["reward"].items()))
    return report


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

    if cfg.ode_init_first and cfg.method != "ode_init":
        stage = ode_init_stage(cfg)
        seed_everything(stage.train.seed)
        Trainer(stage.train, build_method(stage, quiet), Path(stage.out_dir), full_config=stage, quiet=quiet).fit()
        cfg = dataclasses.replace(cfg, student=stage.out_dir)
    seed_everything(cfg.train.seed)
    method = build_method(cfg, quiet)
    trainer = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet)
    last = trainer.fit()
    if not trainer.is_main:  # other ranks of `accelerate launch` stop here
        return
    if cfg.eval_num and cfg.method != "ode_init" and (Path(cfg.out_dir) / "model.safetensors").exists():
        final_eval(cfg, quiet)
    click.echo(f"{cfg.method} run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in list(last.items())[:4]))
