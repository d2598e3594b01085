"""Autoencoder training on shapes-world frames (the latent space of the teacher).

Reconstruction loss (MSE + L1) with noise added to the latent, so the decoder
tolerates the imperfect latents generators produce. At export the latent is
calibrated to zero mean / unit variance per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.autoencoder import Autoencoder, AutoencoderConfig
from ..models.registry import save_weights
from ..train.trainer import Method, StepContext
from ..worlds.shapes import ShapesWorld
from .common import GeneratorState, OptimConfig, adamw, write_sample_grid


@dataclass
class AutoencoderMethodConfig:
    """Autoencoder training settings."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    batch_size: int = 16
    """Clips per micro-batch (every frame of each clip is used)."""
    latent_noise: float = 0.1
    """Std of the noise added to latents, relative to their batch std."""


class AutoencoderMethod(Method):
    name = "autoencoder"

    def __init__(self, cfg: AutoencoderMethodConfig, optim: OptimConfig, world: ShapesWorld, seed: int):
        self.cfg, self.world = cfg, world
        self.model = Autoencoder(cfg.model)
        self.opt, self.sched = adamw(self.model.parameters(), optim)
        self.data = GeneratorState(seed)

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        g = self.data.generator

        def micro(_: int) -> torch.Tensor:
            video, _, _ = self.world.random_clips("train", self.cfg.batch_size, g)
            z = self.model.encode(video)
            z = z + self.cfg.latent_noise * z.detach().std() * torch.randn(z.shape, generator=g)
            x = self.model.decode(z)
            return F.mse_loss(x, video) + 0.1 * F.l1_loss(x, video)

        return ctx.optimize(self.opt, self.model.parameters(), micro, self.sched)

    def checkpoint_modules(self):
        return {"autoencoder": self.model}

    def stateful(self):
        return {"optimizer": self.opt, "scheduler": self.sched, "data": self.data}

    @torch.no_grad()
    def _calibrated(self) -> Autoencoder:
        video, _, _ = self.world.clips("val", range(256))
        self.model.calibrate(video)
        return self.model

    @torch.no_grad()
    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        video, prompts, _ = self.world.clips("val", range(8))
        model = self._calibrated()
        return write_sample_grid(model.decode(model.encode(video)), prompts, folder / f"step_{step:07d}.gif")

    def export(self, run_dir: Path) -> Path:
        return save_weights(self._calibrated(), run_dir / "model.safetensors", "autoencoder", self.cfg.model)
