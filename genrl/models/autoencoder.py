"""A small per-frame convolutional autoencoder: the shapes world's latent space.

Like the VAE in front of Wan2.1, it makes the DiT cheap: a 3x32x32 frame
becomes a 4x8x8 latent (16 tokens with 2x2 patches). Latents are shifted and
scaled to roughly unit variance (``shift`` / ``scale`` are stored with the
weights). Training adds a little noise to the latent so the decoder is robust
to the imperfect latents a generator produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AutoencoderConfig:
    """Per-frame conv autoencoder."""

    channels: int = 3
    """Image channels."""
    latent_channels: int = 4
    """Channels of the latent."""
    width: int = 32
    """Feature width of the conv stack."""
    downsample: int = 2
    """Number of stride-2 stages (2 -> 4x smaller frames)."""


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular"), nn.GroupNorm(8, cout), nn.SiLU())


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        enc: list[nn.Module] = [_block(cfg.channels, w)]
        dec: list[nn.Module] = [_block(cfg.latent_channels, w)]
        for _ in range(cfg.downsample):
            enc += [nn.Conv2d(w, w, 4, stride=2, padding=1, padding_mode="circular"), _block(w, w)]
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(w, w), _block(w, w)]
        enc.append(nn.Conv2d(w, cfg.latent_channels, 3, padding=1, padding_mode="circular"))
        dec.append(nn.Conv2d(w, cfg.channels, 3, padding=1, padding_mode="circular"))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.register_buffer("shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("scale", torch.ones(cfg.latent_channels))

    @property
    def factor(self) -> int:
        return 2**self.cfg.downsample

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [0, 1] -> normalised latents (B, F, C, H/f, W/f)."""
        B, F = video.shape[:2]
        z = self.encoder(video.flatten(0, 1) * 2 - 1)
        z = (z - self.shift[:, None, None]) / self.scale[:, None, None]
        return z.unflatten(0, (B, F))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, F, C, h, w) -> (B, F, 3, H, W) in [0, 1] (differentiable)."""
        B, F = latents.shape[:2]
        z = latents.flatten(0, 1) * self.scale[:, None, None] + self.shift[:, None, None]
        x = self.decoder(z)
        return ((x + 1) / 2).clamp(0, 1).unflatten(0, (B, F))

    @torch.no_grad()
    def calibrate(self, video: torch.Tensor) -> None:
        """Set shift/scale so latents of ``video`` have zero mean and unit std per channel."""
        self.shift.zero_()
        self.scale.fill_(1.0)
        z = self.encode(video)
        self.shift.copy_(z.mean(dim=(0, 1, 3, 4)))
        self.scale.copy_(z.std(dim=(0, 1, 3, 4)).clamp_min(1e-4))
