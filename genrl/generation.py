"""One entry point that turns prompts into pixels for any generator genrl can load.

Commands (`sample`, `eval`) call :func:`generate` and never care whether the
model is a bidirectional teacher or a streaming student.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .models.video_model import VideoModel


@dataclass
class SamplingConfig:
    """How to sample: ``steps`` and ``guidance`` for a bidirectional model, ``student_steps`` for a
    streaming student (which samples without CFG: its teacher's guidance is distilled into it)."""

    steps: int = 50
    """Euler steps over the shifted schedule."""
    guidance: float = 4.0
    """Classifier-free guidance scale (1 = off)."""
    student_steps: int | None = None
    """A streaming student's denoising steps per chunk: None keeps the schedule it was trained with;
    N runs N evenly spaced timesteps from 1000 down (N = 4 is [1000, 750, 500, 250])."""
    first_chunk_steps: int | None = None
    """The first chunk's steps, if other than the rest's: it has no cache to lean on, and a long stream
    pays for it once (N evenly spaced timesteps, as ``student_steps``)."""
    student_schedule: list[float] | None = None
    """A streaming student's timesteps per chunk given one by one (e.g. [1000, 625, 375, 125]), instead of
    ``student_steps``; :func:`parse_timesteps` checks them."""


def student_timesteps(n: int) -> list[float]:
    """N evenly spaced timesteps from 1000 down: the few-step schedule of Self-Forcing-style students
    (4 steps: [1000, 750, 500, 250])."""
    if n < 1:
        raise ValueError(f"student steps must be >= 1, got {n}")
    return [1000.0 * (n - i) / n for i in range(n)]


def parse_timesteps(text: str) -> list[float]:
    """``"1000,625,375,125"`` -> [1000.0, 625.0, 375.0, 125.0]: a few-step schedule starts at 1000 (a chunk
    starts from pure noise) and falls strictly, every timestep in (0, 1000]. ValueError names what is wrong."""
    try:
        steps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers (e.g. 1000,625,375,125)") from None
    if not steps:
        raise ValueError("no timesteps given (e.g. 1000,625,375,125)")
    if steps[0] != 1000:
        raise ValueError(f"the first timestep must be 1000 (a chunk starts from pure noise), got {steps[0]:g}")
    if any(b >= a for a, b in zip(steps, steps[1:])) or steps[-1] <= 0:
        raise ValueError(f"timesteps must fall strictly from 1000 and stay above 0, got {text}")
    return steps


def streaming_timesteps(model: VideoModel, sampling: SamplingConfig) -> list[float]:
    """The timesteps a streaming student runs for each chunk under ``sampling`` (the first: see
    :func:`first_chunk_timesteps`)."""
    if sampling.student_schedule is not None:
        if sampling.student_steps is not None:
            raise ValueError("give a student's steps or its timesteps, not both")
        return [float(t) for t in sampling.student_schedule]
    if sampling.student_steps is None:
        return [float(t) for t in model.cfg.streaming.timesteps]
    return student_timesteps(sampling.student_steps)


def first_chunk_timesteps(model: VideoModel, sampling: SamplingConfig) -> list[float]:
    """The timesteps of a streaming student's first chunk under ``sampling``."""
    if sampling.first_chunk_steps is None:
        return streaming_timesteps(model, sampling)
    return student_timesteps(sampling.first_chunk_steps)


def stream_schedule(model: VideoModel, sampling: SamplingConfig) -> dict[str, list[float]]:
    """``model.stream``'s schedule arguments under ``sampling``: every chunk's timesteps and the first's."""
    return {"timesteps": streaming_timesteps(model, sampling), "first_timesteps": first_chunk_timesteps(model, sampling)}


@dataclass
class Generated:
    videos: torch.Tensor
    """(B, F, 3, H, W) in [0, 1]."""
    seconds: float
    nfe_per_frame: float
    """Network evaluations each frame went through (CFG counts twice)."""


def is_streaming(model: VideoModel) -> bool:
    return bool(model.cfg.streaming.enabled)


def nfe_per_frame(model: VideoModel, sampling: SamplingConfig) -> float:
    """Teacher: steps x (2 with CFG). Student: its few steps + the cache refresh pass (a long stream's
    rate; a video's last chunk skips its refresh, which no later chunk would read, and a first chunk with
    more steps is paid once)."""
    if is_streaming(model):
        return float(len(streaming_timesteps(model, sampling)) + 1)
    return float(sampling.steps * (2 if sampling.guidance != 1.0 else 1))


@torch.no_grad()
def generate(model: VideoModel, prompts: list[str], frames: int, sampling: SamplingConfig, seed: int = 0,
             on_chunk: Callable[[int, torch.Tensor], None] | None = None) -> Generated:
    """Pixels for ``prompts``. Streaming students hand each decoded chunk to ``on_chunk(start, pixels)`` as it is made."""
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    prompts = model.prepare_prompts(prompts, seed + 104_729)  # open attributes: their own stream
    latent_frames = model.latent_frames(frames)
    streaming = is_streaming(model)
    schedule = stream_schedule(model, sampling) if streaming else {}
    if streaming and model.chunk_decodable:
        chunks, done = [], 0
        for lat in model.stream(prompts, latent_frames, g, **schedule):
            pixels = model.decode(lat)
            if on_chunk is not None:
                on_chunk(done, pixels)
            chunks.append(pixels)
            done += pixels.shape[1]
        videos = torch.cat(chunks, dim=1)[:, :frames]
    else:  # a teacher, or a student whose VAE decodes the whole latent video at once
        if streaming:
            latents = torch.cat(list(model.stream(prompts, latent_frames, g, **schedule)), dim=1)
        else:
            latents = model.sample(prompts, latent_frames, sampling.steps, sampling.guidance, g)
        videos = model.decode(latents)[:, :frames]
        if on_chunk is not None:
            on_chunk(0, videos)
    return Generated(videos, time.perf_counter() - start, nfe_per_frame(model, sampling))
