"""The `genrl distill` recipe: config, building the method and its roles, the run (stages, final eval).

The CLI, `genrl sweep`, `genrl bench` and tests call :func:`run` and :func:`build_method`
through genrl's recipe registry; a new distillation method is one file that registers a
builder under its name in ``genrl.registry.METHODS`` (see the end of distill/dmd.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import click

from genrl.errors import UsageError
from genrl.methods.common import OptimConfig
from genrl.models.video_model import StreamingConfig
from genrl.registry import METHODS, RECIPES, Recipe
from genrl.train.trainer import ParallelConfig, TrainConfig
from genrl.worlds.shapes import WorldConfig

from .dmd import DMDConfig
from .ode_init import ODEInitConfig
from .stream_r1 import StreamR1Config

NAMES = ("ode_init", "dmd", "stream_r1")




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
    ode: ODEInitConfig = field(default_factory=ODEInitConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    stream_r1: StreamR1Config = field(default_factory=StreamR1Config)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=[0.0, 0.999], warmup_steps=10))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=[0.0, 0.999], warmup_steps=10))
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    eval_num: int = 0
    """After training, evaluate the exported student on this many test prompts into {out_dir}/eval.json
    (prompt accuracy, reward z-scores, frames/s; shown in report.md). 0 = skip."""


def _load(cfg: DistillConfig, name: str, like=None):
    """A video model by name or path; Wan folders get the recipe's size and share ``like``'s frozen parts."""
    from genrl.models.registry import load_model
    from genrl.models.wan import WanVideoModel, is_wan_folder, load_wan

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
    from genrl.worlds.prompts import PromptFile
    from genrl.worlds.shapes import ShapesWorld

    return PromptFile(cfg.prompts, cfg.world.frames) if cfg.prompts else ShapesWorld(cfg.world)


def build_method(cfg: DistillConfig, quiet: bool):
    """The configured method (from the method registry) with its roles built."""
    if cfg.method not in NAMES:
        raise UsageError(f"config key 'method' is {cfg.method!r}; valid: {', '.join(NAMES)}")
    if cfg.prompts and cfg.eval_num:
        raise UsageError("eval_num measures students against the shapes world's probe; set eval_num=0 with a prompt file")
    if cfg.prompts and cfg.train.val_every:
        raise UsageError("train.val_every measures students against the shapes world's probe; set train.val_every=0 "
                         "with a prompt file")
    if cfg.dmd.gan_weight and cfg.parallel.sequence > 1 and cfg.method in ("dmd", "stream_r1"):
        raise UsageError("dmd.gan_weight reads the critic's whole-video features: it does not run with "
                         "parallel.sequence > 1 yet; use data parallelism (parallel.sequence=1)")
    world = build_world(cfg)
    student, teacher, critic = build_models(cfg)
    frames = student.latent_frames(cfg.world.frames)
    chunk = student.cfg.dit.chunk_frames
    if frames % chunk:  # a partial last chunk would be dropped by the rollout
        fits = [f for f in range(1, 4 * cfg.world.frames + 8 * chunk) if student.latent_frames(f) % chunk == 0]
        near = sorted(fits, key=lambda f: abs(f - cfg.world.frames))[:2]
        raise UsageError(f"config key 'world.frames' is {cfg.world.frames} ({frames} latent frames); valid: whole "
                         f"{chunk}-latent-frame chunks, e.g. {' or '.join(map(str, sorted(near)))}")
    if frames % cfg.streaming.local_frames and frames > cfg.streaming.local_frames:
        raise UsageError("world.frames (in latent frames) longer than streaming.local_frames must be a multiple of it")
    return METHODS.get(cfg.method)(cfg, student=student, teacher=teacher, critic=critic, world=world, quiet=quiet)


def ode_init_stage(cfg: DistillConfig) -> DistillConfig:
    """The ODE-init stage that precedes ``cfg`` when ``ode_init_first`` is set."""
    train = dataclasses.replace(cfg.train, steps=cfg.ode.stage_steps, sample_every=0, val_every=0,
                                checkpoint_every=max(1, cfg.ode.stage_steps // 3))
    optim = OptimConfig(lr=cfg.ode.stage_lr, betas=[0.9, 0.999], warmup_steps=min(20, cfg.ode.stage_steps))
    return dataclasses.replace(cfg, method="ode_init", out_dir=str(Path(cfg.out_dir) / "ode_init"),
                               ode_init_first=False, train=train, optim=optim)


def final_eval(cfg: DistillConfig, quiet: bool) -> dict:
    """Evaluate the run's exported student on the test split; write eval.json and refresh the report."""
    from genrl.evaluation import evaluate_run
    from genrl.report import write_report

    sr1 = cfg.stream_r1  # the training reward of a Stream-R1 run; for DMD the same model, for comparison
    rewards = [sr1.reward_weights if sr1.reward == "shapes" else sr1.reward]
    report = evaluate_run(cfg.out_dir, cfg.eval_num, rewards, quiet=quiet)
    write_report(cfg.out_dir)
    click.echo(f"eval on {cfg.eval_num} test prompts: prompt_accuracy={report['prompt_accuracy']:.4f} "
               + " ".join(f"{k}={v:+.3f}" for k, v in report["reward"].items()))
    return report


def run(cfg: DistillConfig, quiet: bool = False) -> dict:
    """Train (after an ODE-init stage when asked), export, and evaluate on the test split when eval_num > 0."""
    from genrl.train.trainer import Trainer, seed_everything

    if cfg.ode_init_first and cfg.method != "ode_init":
        stage = ode_init_stage(cfg)
        seed_everything(stage.train.seed)
        Trainer(stage.train, build_method(stage, quiet), Path(stage.out_dir), full_config=stage, quiet=quiet).fit()
        cfg = dataclasses.replace(cfg, student=stage.out_dir)
    seed_everything(cfg.train.seed)
    method = build_method(cfg, quiet)
    trainer = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet, parallel=cfg.parallel)
    last = trainer.fit()
    summary = {"last": last, "is_main": trainer.is_main, "best": trainer.best}
    if trainer.is_main and cfg.eval_num and cfg.method != "ode_init" and (Path(cfg.out_dir) / "model.safetensors").exists():
        summary["eval"] = final_eval(cfg, quiet)
    return summary


RECIPES.register("distill", Recipe("distill", DistillConfig, build_method, run))
