"""DMD2's GAN term for DMD: a real-vs-generated classifier on the critic's features.

DMD2 (Yin et al. 2024) adds a non-saturating GAN loss to distribution matching, with real *data* (not the
teacher) as the positive class, so the student is pulled towards the data where the teacher falls short. As
there, the classifier is a small head on the fake-score network (the critic) at a middle block, read on noised
latents; the critic learns it alongside its flow loss (one optimiser), and the student's GAN term flows through
the frozen critic into the rollout. The features come from a forward hook on the block (any DiT with
``.blocks``). Its randomness (real clips, noise levels) comes from its own
generator, so turning it on changes no draw of the DMD step.

Losses, with D the logit:
  classifier: softplus(-D(real_t)) + softplus(D(fake_t))
  generator:  softplus(-D(fake_t)), gradient into the student's rollout only
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from genrl import schedulers as fm
from genrl.errors import UsageError


class FeatureClassifier(nn.Module):
    """Logit that tokens (B, N, D) of the critic's block come from real data for their text (projection-style)."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())
        self.head = nn.Linear(dim, 1)
        self.text = nn.Linear(text_dim, dim)

    def enable_activation_checkpointing(self) -> None:
        """A no-op: a norm and two small linear layers hold little worth recomputing (the critic and the
        student still recompute theirs under train.activation_checkpointing)."""

    def forward(self, tokens: torch.Tensor, text) -> torch.Tensor:
        dtype = self.head.weight.dtype  # a frozen role's text features may come in lower precision
        h = self.mlp(self.norm(tokens.to(dtype))).mean(dim=1)  # (B, D)
        words, mask = text[0].to(dtype), text[1]
        m = mask.to(dtype).unsqueeze(-1)
        pooled = (words * m).sum(1) / m.sum(1).clamp_min(1.0)
        return (self.head(h) + (h * self.text(pooled)).sum(-1, keepdim=True) / h.shape[-1] ** 0.5).squeeze(-1)


@contextlib.contextmanager
def block_features(dit: nn.Module, block: int):
    """Collect the output tokens of ``dit.blocks[block]`` on every forward inside the context (a list)."""
    out: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        out.append(output[0] if isinstance(output, tuple) else output)

    handle = dit.blocks[block].register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


def feature_block(dit: nn.Module, block: int) -> int:
    """The block index the classifier reads: ``block``, or the middle one for -1 (dmd.gan_block)."""
    n = len(dit.blocks)
    if block >= n:
        raise UsageError(f"dmd.gan_block={block}: the critic has blocks 0..{n - 1}")
    return n // 2 if block < 0 else block


def classifier_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating classifier loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def generator_gan_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake))."""
    return F.softplus(-d_fake).mean()


def noised(x0: torch.Tensor, sigma: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x0 noised to per-sample ``sigma`` with noise from ``g`` (the GAN's own generator)."""
    return fm.add_noise(x0, torch.randn(x0.shape, generator=g).to(x0.device), sigma.to(x0.device))
