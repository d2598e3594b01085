"""`genrl bench`: costs measured side by side in one process, reported as ratios.

Timings taken in separate runs on a shared machine mostly measure the machine;
here the methods being compared alternate step by step in one process, so any
slowdown hits both alike and the ratio stays meaningful.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from .distill import DistillConfig
from .qa import GRPOConfig
from .options import config_command, output_file, quiet_option


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternate(fns: dict, rounds: int, label: str, quiet: bool) -> dict[str, float]:
    """Mean seconds of each ``fns[name](i)``, the callables taking turns for ``rounds`` timed rounds
    (after one warm-up round, which fills caches and allocators)."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    for i in range(rounds + 1):
        for name, fn in fns.items():
            t = _timed(lambda: fn(i))
            if i:
                times[name].append(t)
        if not quiet and i:
            click.echo(f"{label} {i}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in fns), err=True)
    return {n: sum(t) / len(t) for n, t in times.items()}


@config_command(DistillConfig)
@click.option("--steps", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed training steps per method (after one warm-up step).")
@click.option("--samples", type=click.IntRange(0, 1000), default=3, show_default=True, help="Timed streaming samples per student (0 = skip).")
@click.option("--out", type=output_file((".json",)), default=None, help="Also write the figures as JSON.")
@quiet_option
def bench(cfg: DistillConfig, steps: int, samples: int, out, quiet: bool):
    """Cost of a Stream-R1 training step against a plain DMD step, side by side.

    Builds both methods from the same distill config (the Stream-R1 one as
    configured, the DMD one with the same models and seeds), alternates their
    training steps and reports seconds per step and the ratio; then times
    streaming sampling of both students the same way.

    \b
    Example:
      genrl bench --config configs/stream_r1.yaml --steps 5
    """
    import torch
    from accelerate import Accelerator

    from ..generation import SamplingConfig, generate
    from ..train.trainer import StepContext, seed_everything
    from .distill import build_method

    methods = {}
    for name in ("dmd", "stream_r1"):
        seed_everything(cfg.train.seed)
        methods[name] = build_method(dataclasses.replace(cfg, method=name), quiet=True)
    ctx = StepContext(Accelerator(cpu=not torch.cuda.is_available()), cfg.train)  # as the Trainer builds it
    fns = {n: (lambda i, m=m: m.train_step(i, ctx)) for n, m in methods.items()}
    report = {"step_seconds": _alternate(fns, steps, "step", quiet)}
    report["step_ratio"] = report["step_seconds"]["stream_r1"] / report["step_seconds"]["dmd"]
    if samples:
        _, prompts, _ = methods["dmd"].world.clips("test", range(8))
        frames = methods["dmd"].world.cfg.frames
        fns = {n: (lambda i, m=m: generate(m.ema.module, prompts, frames, SamplingConfig(), seed=i)) for n, m in methods.items()}
        report["sample_seconds"] = _alternate(fns, samples, "sample", quiet)
        report["sample_ratio"] = report["sample_seconds"]["stream_r1"] / report["sample_seconds"]["dmd"]
    lines = ["| what | dmd | stream_r1 | ratio |", "|---|---|---|---|",
             f"| training step (s) | {report['step_seconds']['dmd']:.3f} | {report['step_seconds']['stream_r1']:.3f} | {report['step_ratio']:.2f} |"]
    if samples:
        lines.append(f"| streaming sample of 8 clips (s) | {report['sample_seconds']['dmd']:.3f} | "
                     f"{report['sample_seconds']['stream_r1']:.3f} | {report['sample_ratio']:.2f} |")
    click.echo("\n".join(lines))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


@config_command(GRPOConfig, name="bench-grpo")
@click.option("--steps", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed GRPO steps per setting (after one warm-up step).")
@click.option("--out", type=output_file((".json",)), default=None, help="Also write the figures as JSON.")
@quiet_option
def bench_grpo(cfg: GRPOConfig, steps: int, out, quiet: bool):
    """Cost of a GRPO step with cached video embeddings against recomputing the vision tower.

    Builds the method twice from one grpo config (grpo.cache_video on and off,
    same policy and seeds), alternates their steps and reports seconds per
    step, the speed-up and how many clips the vision tower encoded per step.

    \b
    Example:
      genrl bench-grpo --config configs/grpo_video_qa.yaml --steps 5
    """
    import torch
    from accelerate import Accelerator

    from ..methods.grpo import build_grpo
    from ..train.trainer import StepContext, seed_everything

    methods = {}
    for name, cached in (("cached", True), ("recomputed", False)):
        seed_everything(cfg.train.seed)
        methods[name] = build_grpo(dataclasses.replace(cfg.grpo, cache_video=cached), cfg.optim, cfg.train.seed)
    ctx = StepContext(Accelerator(cpu=not torch.cuda.is_available()), cfg.train)
    fns = {n: (lambda i, m=m: m.train_step(i, ctx)) for n, m in methods.items()}
    seconds = _alternate(fns, steps, "step", quiet)
    report = {"step_seconds": seconds, "speedup": seconds["recomputed"] / seconds["cached"],
              "vision_clips_per_step": {n: m.vision_rows / (steps + 1) for n, m in methods.items()}}
    v = report["vision_clips_per_step"]
    click.echo("\n".join([
        "| what | cached embeddings | recomputed | speed-up |", "|---|---|---|---|",
        f"| GRPO step (s) | {seconds['cached']:.3f} | {seconds['recomputed']:.3f} | {report['speedup']:.2f}x |",
        f"| clips through the vision tower per step | {v['cached']:g} | {v['recomputed']:g} | |"]))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
