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
from .options import config_command, output_file, quiet_option


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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
    times: dict[str, list[float]] = {n: [] for n in methods}
    for i in range(steps + 1):
        for name, m in methods.items():
            t = _timed(lambda: m.train_step(i, ctx))
            if i:  # the first step of each warms caches and allocators
                times[name].append(t)
        if not quiet:
            click.echo(f"step {i}/{steps}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in methods if times[n]), err=True)
    report = {"step_seconds": {n: sum(t) / len(t) for n, t in times.items()}}
    report["step_ratio"] = report["step_seconds"]["stream_r1"] / report["step_seconds"]["dmd"]
    if samples:
        _, prompts, _ = methods["dmd"].world.clips("test", range(8))
        frames = methods["dmd"].world.cfg.frames
        st = {n: [] for n in methods}
        for i in range(samples + 1):
            for n, m in methods.items():
                t = _timed(lambda: generate(m.ema.module, prompts, frames, SamplingConfig(), seed=i))
                if i:
                    st[n].append(t)
        report["sample_seconds"] = {n: sum(t) / len(t) for n, t in st.items()}
        report["sample_ratio"] = report["sample_seconds"]["stream_r1"] / report["sample_seconds"]["dmd"]
    lines = ["| what | dmd | stream_r1 | ratio |", "|---|---|---|---|",
             f"| training step (s) | {report['step_seconds']['dmd']:.3f} | {report['step_seconds']['stream_r1']:.3f} | {report['step_ratio']:.2f} |"]
    if samples:
        lines.append(f"| streaming sample of 8 clips (s) | {report['sample_seconds']['dmd']:.3f} | "
                     f"{report['sample_seconds']['stream_r1']:.3f} | {report['sample_ratio']:.2f} |")
    click.echo("\n".join(lines))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
