"""The text-to-video model bundle: text encoder + DiT + autoencoder, exposing primitives.

Methods (pretraining, DMD, Stream-R1) only call these primitives —
``encode_text``, ``add_noise``, ``velocity``, ``predict_x0``, ``sample``,
``decode`` — and never reach into the scheduler or the autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import schedulers as fm
from .autoencoder import Autoencoder, AutoencoderConfig
from .dit import DiTConfig, KVCache, VideoDiT
from .text import TextEncoder, TextEncoderConfig, WordTokenizer


@dataclass
class VideoModelConfig:
    """A text-to-video flow-matching model on autoencoder latents."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    shift: float = 3.0
    """Time shift k used for training noise levels and sampling steps."""
    height: int = 32
    """Pixel height of generated frames."""
    width: int = 32
    """Pixel width of generated frames."""


class VideoModel(nn.Module):
    def __init__(self, cfg: VideoModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(max_len=cfg.text.max_len)
        self.text_encoder = TextEncoder(cfg.text, len(self.tokenizer.vocab))
        self.dit = VideoDiT(cfg.dit)
        self.autoencoder = Autoencoder(cfg.autoencoder)
        self.autoencoder.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def latent_hw(self) -> tuple[int, int]:
        f = self.autoencoder.factor
        return self.cfg.height // f, self.cfg.width // f

    def latent_shape(self, batch: int, frames: int) -> tuple[int, ...]:
        return (batch, frames, self.cfg.dit.in_channels, *self.latent_hw)

    # ----------------------------------------------------------------- primitives
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.text_encoder(ids, mask), mask

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents)

    @staticmethod
    def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
        return fm.add_noise(x0, eps, sigma)

    def velocity(self, xt, sigma, text, null_text=None, guidance: float = 1.0, causal=False, cache: KVCache | None = None):
        """Flow velocity at noise level ``sigma`` ((B,) or (B, F)); CFG when guidance != 1."""
        t = torch.as_tensor(sigma, device=xt.device).float() * fm.NUM_TRAIN_TIMESTEPS
        t = t.expand(xt.shape[0]) if t.ndim == 0 else t
        v_c = self.dit(xt, t, *text, causal=causal, cache=cache)
        if guidance == 1.0 or null_text is None:
            return v_c
        v_u = self.dit(xt, t, *null_text, causal=causal, cache=cache)
        return fm.cfg(v_u, v_c, guidance)

    def predict_x0(self, xt, sigma, text, null_text=None, guidance: float = 1.0, causal=False, cache=None):
        v = self.velocity(xt, sigma, text, null_text, guidance, causal, cache)
        return fm.x0_from_velocity(xt, v, sigma)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        frames: int,
        steps: int = 50,
        guidance: float = 5.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bidirectional Euler sampling over ``steps`` shifted steps with CFG; returns latents."""
        text = self.encode_text(prompts)
        null = self.encode_text([""] * len(prompts)) if guidance != 1.0 else None
        x = noise if noise is not None else torch.randn(self.latent_shape(len(prompts), frames), generator=generator)
        x = x.to(self.device)
        sigmas = fm.sampling_sigmas(steps, self.cfg.shift).tolist()
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            v = self.velocity(x, torch.full((x.shape[0],), s, device=x.device), text, null, guidance)
            x = fm.euler_step(x, v, s, s_next)
        return x


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
