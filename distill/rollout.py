"""Self-forcing rollout: the student generates chunk by chunk from its own outputs.

Departure from a plain streaming sample (``VideoModel.stream``) only in what
keeps gradients: one exit step is drawn per iteration and shared by all
chunks; every denoising step before it runs under ``no_grad``, the exit-step
pass keeps its graph, and the cache is written from the detached result, so
the KV cache never carries gradient (as in Self-Forcing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl import schedulers as fm
from genrl.models.video_model import VideoModel


@dataclass
class Rollout:
    latents: torch.Tensor
    """(B, F, C, h, w) clean chunks; only the exit-step passes carry gradient."""
    exit_step: int
    """Index of the denoising step whose pass kept gradients."""


def self_forcing_rollout(
    student: VideoModel,
    text: tuple[torch.Tensor, torch.Tensor],
    noise: torch.Tensor,
    exit_step: int,
    generator: torch.Generator | None = None,
    grad: bool = True,
) -> Rollout:
    """Roll the student over ``noise`` (B, F, C, h, w), exiting every chunk at ``exit_step``."""
    sigmas = student.streaming_sigmas()
    n_steps = len(sigmas) - 1
    if not 0 <= exit_step < n_steps:
        raise ValueError(f"exit_step must be in [0, {n_steps}), got {exit_step}")
    cache = student.new_cache()
    chunk = student.cfg.dit.chunk_frames
    outs = []
    for start in range(0, noise.shape[1], chunk):
        x = noise[:, start : start + chunk]
        for i in range(exit_step):
            with torch.no_grad():
                x0 = student.predict_x0_streaming(x, sigmas[i], text, cache)
                eps = torch.randn(x0.shape, generator=generator).to(x0.device)
                x = fm.add_noise(x0, eps, sigmas[i + 1])
        with torch.set_grad_enabled(grad):
            x0 = student.predict_x0_streaming(x, sigmas[exit_step], text, cache)
        if start + chunk < noise.shape[1]:  # the last chunk's cache refresh would serve no later chunk
            student.write_cache(x0, text, cache, generator)
        outs.append(x0)
    return Rollout(torch.cat(outs, dim=1), exit_step)
