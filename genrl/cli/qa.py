"""`genrl sft` and `genrl grpo`: train a video-language model on shapes QA."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..errors import UsageError
from ..methods.common import OptimConfig
from ..methods.grpo import GRPOMethodConfig
from ..methods.sft import SFTMethodConfig
from ..train.trainer import ParallelConfig, TrainConfig
from .options import config_command, quiet_option


@dataclass
class SFTConfig:
    """`genrl sft` recipe."""

    out_dir: str = "runs/sft"
    """Run folder (config, metrics.jsonl, checkpoints/, model.safetensors, eval.json, report.md)."""
    sft: SFTMethodConfig = field(default_factory=SFTMethodConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50))
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval_num: int = 512
    """After training, score the model on this many test-split questions into {out_dir}/eval.json (0 = skip)."""


@dataclass
class GRPOConfig:
    """`genrl grpo` recipe."""

    out_dir: str = "runs/grpo"
    """Run folder (config, metrics.jsonl, checkpoints/, model.safetensors, eval.json, report.md)."""
    grpo: GRPOMethodConfig = field(default_factory=GRPOMethodConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=5))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(grad_clip=1.0, checkpoint_every=50, sample_every=25))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval_num: int = 512
    """After training, score the policy on this many test-split questions into {out_dir}/eval.json (0 = skip)."""


def _final_eval(model, out_dir: str, num: int, quiet: bool, start: dict | None = None) -> dict:
    from ..methods.qa import evaluate_qa, summary
    from ..report import write_report

    report = evaluate_qa(model, "test", num, quiet=quiet)
    if start is not None:  # the starting policy on the curve's first (smaller) set of questions
        report["start"] = {k: start[k] for k in ("accuracy", "per_type", "num")}
    Path(out_dir, "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(out_dir)
    click.echo(f"eval on {num} test questions: {summary(report)}")
    return report


@config_command(SFTConfig)
@quiet_option
def sft(cfg: SFTConfig, quiet: bool):
    """Supervised warm-start of the tiny VLM on shapes video QA.

    Writes a run folder; re-running the same command resumes. Works under
    `accelerate launch` and `torchrun` (`parallel.sequence=N` splits the VLM's
    token sequence over N processes).

    \b
    Examples:
      genrl sft --config configs/sft_video_qa.yaml
      genrl sft --config configs/sft_video_qa.yaml train.steps=100 out_dir=runs/sft_short
    """
    from ..methods.sft import SFTMethod
    from ..train.trainer import Trainer, seed_everything

    seed_everything(cfg.train.seed)
    method = _build(lambda: SFTMethod(cfg.sft, cfg.optim, cfg.train.seed))
    trainer = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet, parallel=cfg.parallel)
    last = trainer.fit()
    if not trainer.is_main:  # other ranks of `accelerate launch` stop here
        return
    if cfg.eval_num:
        _final_eval(method.model, cfg.out_dir, cfg.eval_num, quiet)
    click.echo(f"sft run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))


@config_command(GRPOConfig)
@quiet_option
def grpo(cfg: GRPOConfig, quiet: bool):
    """GRPO (or T-GRPO, TW-GRPO, Reg-GRPO) on shapes video QA from an SFT start.

    Each step rolls out grpo.group_size answers per question, scores them with
    verifiable rewards (accuracy + format) and updates the policy; held-out
    accuracy is logged every train.sample_every steps and plotted in report.md.
    Re-running the same command resumes. Works under `accelerate launch`.

    \b
    Examples:
      genrl grpo --config configs/grpo_video_qa.yaml
      genrl grpo --config configs/grpo_video_qa.yaml grpo.variant=t_grpo out_dir=runs/t_grpo
      genrl grpo --config configs/grpo_video_qa.yaml grpo.cache_video=false
    """
    from ..methods.grpo import build_grpo
    from ..methods.qa import accuracy_metrics, evaluate_qa
    from ..train.trainer import Trainer, seed_everything

    seed_everything(cfg.train.seed)
    method = _build(lambda: build_grpo(cfg.grpo, cfg.optim, cfg.train.seed))
    trainer = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet, parallel=cfg.parallel)
    start = None
    metrics = Path(cfg.out_dir) / "metrics.jsonl"
    if cfg.grpo.eval_num and trainer.is_main and not metrics.exists():  # the curve's first point: the SFT start
        start = evaluate_qa(method.policy, "test", cfg.grpo.eval_num, quiet=True)
        trainer.log(0, accuracy_metrics(start, "heldout"), 0.0)
    last = trainer.fit()
    if not trainer.is_main:
        return
    if cfg.eval_num:
        _final_eval(method.policy, cfg.out_dir, cfg.eval_num, quiet, start)
    click.echo(f"{cfg.grpo.variant} run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in list(last.items())[:4]))


def _build(make):
    try:
        return make()
    except ValueError as e:
        raise UsageError(str(e)) from None
