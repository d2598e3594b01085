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
from .options import OutputFolder, config_command, quiet_option


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


def _final_eval(model, out_dir: str, num: int, quiet: bool, start: dict | None = None, write: bool = True) -> dict:
    """Score ``model`` on ``num`` test questions into eval.json and the report (``write=False``: only score, as
    the other processes of a sharded policy do beside the main one)."""
    from ..methods.qa import evaluate_qa, summary
    from ..report import write_report

    report = evaluate_qa(model, "test", num, quiet=quiet or not write)
    if not write:
        return report
    if start is not None:  # the starting policy on the curve's first (smaller) set of questions
        report["start"] = {k: start[k] for k in ("accuracy", "per_type", "num")}
    Path(out_dir, "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(out_dir)
    click.echo(f"eval on {num} test questions: {summary(report)}")
    return report


def _final_stream_eval(model, out_dir: str, num: int, chunk_frames: int, quiet: bool) -> dict:
    from ..methods.vst import evaluate_stream, stream_summary
    from ..report import write_report

    report = evaluate_stream(model, "test", num, chunk_frames=chunk_frames, quiet=quiet)
    Path(out_dir, "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(out_dir)
    click.echo(f"streaming eval on {num} test questions: {stream_summary(report)}")
    return report


@config_command(SFTConfig)
@quiet_option
def sft(cfg: SFTConfig, quiet: bool):
    """Supervised warm-start of the tiny VLM on shapes video QA.

    sft.init may name a local Qwen2-VL / Qwen2.5-VL folder instead. Writes a
    run folder; re-running the same command resumes. Works under `accelerate
    launch` and `torchrun` (`parallel.sequence=N` splits the VLM's token
    sequence over N processes; a Qwen2-VL's vision tower by frames too;
    train.shard_trained=true shards the VLM's weights, gradients and AdamW
    state over the processes).

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

    def final_eval():
        if cfg.eval_num and cfg.sft.stream.enabled and trainer.is_main:
            _final_stream_eval(method.model, cfg.out_dir, cfg.eval_num, cfg.sft.stream.chunk_frames, quiet)
        elif cfg.eval_num and trainer.runs_samples:  # a sharded policy's processes all run it; the main one writes
            _final_eval(method.model, cfg.out_dir, cfg.eval_num, quiet, write=trainer.is_main)

    last = trainer.fit(final_eval)
    if not trainer.is_main:  # other ranks of `accelerate launch` stop here
        return
    click.echo(f"sft run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))


@config_command(GRPOConfig)
@quiet_option
def grpo(cfg: GRPOConfig, quiet: bool):
    """GRPO (or T-GRPO, TW-GRPO, Reg-GRPO) on shapes video QA from an SFT start.

    Each step rolls out grpo.group_size answers per question, scores them with
    verifiable rewards (accuracy + format) and updates the policy; held-out
    accuracy is logged every train.sample_every steps and plotted in report.md.
    train.grad_accum=K scores and backpropagates the step's questions (each
    with its whole group) in K passes: the same update, 1/K of the activations.
    Re-running the same command resumes. Works under `accelerate launch`
    (`parallel.sequence=N` splits the policy's and the reference's scoring
    passes over N processes, and a Qwen2-VL policy's vision tower by frames;
    train.shard_trained=true shards the policy's weights, gradients and AdamW
    state over the processes, train.shard_frozen=true the reference's).

    \b
    Examples:
      genrl grpo --config configs/grpo_video_qa.yaml
      genrl grpo --config configs/grpo_video_qa.yaml grpo.variant=t_grpo out_dir=runs/t_grpo
      genrl grpo --config configs/grpo_video_qa.yaml grpo.cache_video=false
      accelerate launch --num_processes 8 -m genrl.cli grpo --config configs/grpo_video_qa.yaml grpo.policy=/models/Qwen2-VL-2B-Instruct grpo.policy_dtype=bfloat16 parallel.sequence=4
      accelerate launch --num_processes 8 -m genrl.cli grpo --config configs/grpo_video_qa.yaml grpo.policy=/models/Qwen2-VL-7B-Instruct train.shard_trained=true train.shard_frozen=true train.activation_checkpointing=true
    """
    from ..methods.grpo import build_grpo, check_passes
    from ..methods.qa import accuracy_metrics, evaluate_qa
    from ..train.trainer import Trainer, seed_everything

    check_passes(cfg.train.grad_accum, cfg.grpo.prompts_per_step)  # before any model is loaded
    seed_everything(cfg.train.seed)
    method = _build(lambda: build_grpo(cfg.grpo, cfg.optim, cfg.train.seed))
    trainer = Trainer(cfg.train, method, Path(cfg.out_dir), full_config=cfg, quiet=quiet, parallel=cfg.parallel)
    start = None
    fresh = trainer.main_value(not (Path(cfg.out_dir) / "metrics.jsonl").exists())
    if cfg.grpo.eval_num and trainer.runs_samples and fresh:  # the curve's first point: the SFT start
        start = evaluate_qa(method.policy, "test", cfg.grpo.eval_num, quiet=True)
        if trainer.is_main:
            trainer.log(0, accuracy_metrics(start, "heldout"), 0.0)

    def final_eval():
        if cfg.eval_num and trainer.runs_samples:  # a sharded policy's processes all run it; the main one writes
            _final_eval(method.policy, cfg.out_dir, cfg.eval_num, quiet, start, write=trainer.is_main)

    last = trainer.fit(final_eval)
    if not trainer.is_main:
        return
    click.echo(f"{cfg.grpo.variant} run {cfg.out_dir}: {cfg.train.steps} steps, " + ", ".join(f"{k}={v:.4g}" for k, v in list(last.items())[:4]))


def _build(make):
    try:
        return make()
    except ValueError as e:
        raise UsageError(str(e)) from None


STUDY_SPLITS = (("in-distribution", "val", -1.0), ("held-out combinations", "test", -1.0),
                ("held-out background", "test", 0.5))
"""(name, split, background) of the RL-vs-SFT study: val clips share the training clips' attribute combinations, test
clips hold out combinations, and a mid-grey background (0.5) is a value no training clip had."""


@click.command(name="rl-vs-sft")
@click.option("--start", default="shapes-vlm-sft", show_default=True, help="The policy both arms start from (name or path).")
@click.option("--steps", type=click.IntRange(1, 100_000), default=300, show_default=True, help="Training steps of each arm.")
@click.option("--sft-lr", type=click.FloatRange(0, min_open=True), default=3e-4, show_default=True,
              help="Learning rate of the SFT arm (the GRPO arm uses `genrl grpo`'s, 1e-4).")
@click.option("--num", type=click.IntRange(1, 100_000), default=512, show_default=True, help="Questions per split.")
@click.option("--out-dir", type=OutputFolder(), default="runs/rl_vs_sft", show_default=True,
              help="Study folder: sft/, grpo/, evals, table.")
@quiet_option
def rl_vs_sft(start, steps, sft_lr, num, out_dir, quiet):
    """SEED-Bench-R1's question on the shapes world: from one start, more SFT or GRPO?

    Trains both arms for --steps from --start (SFT on the reference answers; GRPO with
    the verifiable rewards, as `genrl grpo`), then asks the start and both arms the same
    --num questions on three splits — in-distribution (val), held-out attribute
    combinations (test) and a held-out attribute value (test clips on a mid-grey background
    no training clip had) — and writes each model's per-question results, the paired
    differences GRPO - SFT with 95% intervals, and table.md. Re-running resumes the arms.

    \b
    Example:
      genrl rl-vs-sft --steps 300 --num 512 --out-dir runs/rl_vs_sft
    """
    from ..methods.qa import evaluate_qa, load_policy
    from .compare import compare_reports
    from .main import main as cli

    load_policy(start)  # a start that does not load is one line here, before either arm runs
    out = Path(out_dir)
    arms = {
        "sft": ["sft", f"sft.init={start}", f"optim.lr={sft_lr}", "optim.warmup_steps=20", "sft.eval_num=0"],
        "grpo": ["grpo", f"grpo.policy={start}", "grpo.prompts_per_step=16", "grpo.eval_num=0", "train.log_every=5"],
    }
    for name, args in arms.items():
        code = cli([*args, f"train.steps={steps}", "train.sample_every=0", f"train.checkpoint_every={max(1, steps // 4)}",
                    "eval_num=0", f"out_dir={out / name}", "--quiet"])
        if code == 2:  # the arm refused its settings in one line of its own
            raise click.exceptions.Exit(2)
        if code:
            raise click.ClickException(f"the {name} arm failed (exit {code}); see {out / name}")
    models = {"start": start, "sft": str(out / "sft"), "grpo": str(out / "grpo")}
    reports: dict[str, dict[str, dict]] = {}
    for label, split, background in STUDY_SPLITS:
        for name, path in models.items():
            r = evaluate_qa(load_policy(path), split, num, quiet=quiet, background=background)
            (out / f"eval_{name}_{label.replace(' ', '_')}.json").write_text(json.dumps(r, indent=2) + "\n")
            reports.setdefault(label, {})[name] = r
    lines = ["| split | start | SFT | GRPO | GRPO - SFT (95% interval) |", "|---|---|---|---|---|"]
    results = {}
    for label, _, _ in STUDY_SPLITS:
        r = reports[label]
        m, lo, hi = compare_reports([r["sft"]], [r["grpo"]])["accuracy"]
        results[label] = {k: r[k]["accuracy"] for k in models} | {"grpo_minus_sft": [m, lo, hi]}
        lines.append(f"| {label} | {r['start']['accuracy']:.4f} | {r['sft']['accuracy']:.4f} | {r['grpo']['accuracy']:.4f} "
                     f"| {m:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    click.echo(f"{num} questions per split, paired; an interval holding 0 is no measured difference")
    click.echo("\n".join(lines))
