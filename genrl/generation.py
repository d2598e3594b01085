"""One entry point that turns prompts into pixels for any generator genrl can load.

Commands (`sample`, `eval`) call :func:`generate` and never care whether the
model is a bidirectional teacher or a streaming student.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .models.video_model import VideoModel


@dataclass
class SamplingConfig:
    """How to sample a bidirectional model."""

    steps: int = 50
    """Euler steps over the shifted schedule."""
    guidance: float = 4.0
    """Classifier-free guidance scale (1 = off)."""


@dataclass
class Generated:
    videos: torch.Tensor
    """(B, F, 3, H, W) in [0, 1]."""
    seconds: float
    nfe_per_frame: float
    """Network evaluations each frame went through (CFG counts twice)."""


@torch.no_grad()
def generate(model: VideoModel, prompts: list[str], frames: int, sampling: SamplingConfig, seed: int = 0) -> Generated:
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    latents = model.sample(prompts, frames, sampling.steps, sampling.guidance, g)
    videos = model.decode(latents)
    nfe = sampling.steps * (2 if sampling.guidance != 1.0 else 1)
    return Generated(videos, time.perf_counter() - start, float(nfe))
