"""Pieces several methods share: optimiser config, data stream state, sample grids."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import check
from ..io.grid import captioned_grid
from ..io.video import write_video
from ..worlds.probe import AttributeProbe


@dataclass
class OptimConfig:
    """AdamW with linear warm-up."""

    lr: float = check(3e-4, ">0")
    """Peak learning rate."""
    betas: list[float] = check(factory=lambda: [0.9, 0.999], rule="each [0, 1)")
    """AdamW betas."""
    weight_decay: float = check(0.0, ">=0")
    """AdamW weight decay."""
    warmup_steps: int = check(100, ">=0")
    """Linear warm-up length in optimiser steps."""
    decay_steps: int = check(0, ">=0")
    """Cosine decay to ``min_lr_ratio * lr`` over this many steps after warm-up (0 = constant)."""
    min_lr_ratio: float = check(0.05, "[0, 1]")
    """Final learning rate of the cosine decay, relative to ``lr``."""


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): warm-up, then constant or cosine."""
    warm = max(1, cfg.warmup_steps)
    if step < warm:
        return (step + 1) / warm
    if cfg.decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warm) / cfg.decay_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(params, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable ``params`` (parameters, or param-group dicts, a group's own "lr" kept) and its
    schedule, which scales every group's rate by the same warm-up / decay factor."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, cfg=cfg))
    return opt, sched


class GeneratorState:
    """A torch.Generator whose state goes into checkpoints (the data position of a run)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def write_sample_grid(videos: torch.Tensor, prompts: list[str], path: Path) -> dict[str, float]:
    """Save a captioned grid gif and return the probe's prompt accuracy on it."""
    write_video(path, captioned_grid(videos, prompts, cols=4), fps=6)
    acc, _ = AttributeProbe().prompt_accuracy(videos, prompts)
    return {"sample_prompt_accuracy": acc}


@torch.no_grad()
def sample_and_write(model, world, num: int, path: Path, steps: int = 30, guidance: float = 4.0) -> dict[str, float]:
    """Generate ``num`` val-split prompts with any generator (teacher or streaming student), write a grid,
    and return what the prompt source can measure on it (the probe's accuracy on the shapes world)."""
    from ..generation import SamplingConfig, generate

    prompts = world.prompts("val", range(num))
    videos = generate(model, prompts, world.cfg.frames, SamplingConfig(steps, guidance), seed=0).videos
    write_video(path, captioned_grid(videos, prompts, cols=4), fps=model.fps)
    return world.score(videos, prompts)


class StudentOutputs:
    """Mixin of the distill methods: what a run writes and validates is the EMA of the student
    (``self.ema.module``), sampled and measured on ``self.world``'s frames."""

    val_key = "val_prompt_accuracy"

    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        return sample_and_write(self.ema.module, self.world, self.cfg.num_samples, folder / f"step_{step:07d}.gif")

    def export(self, run_dir: Path) -> Path:
        return self.ema.module.save(run_dir)

    def validate(self, num: int) -> dict[str, float]:
        from ..evaluation import validation_accuracy

        return validation_accuracy(self.ema.module, num, frames=self.world.cfg.frames)
