"""Flow-matching maths as pure functions (no hidden cursor).

Convention (Wan2.1 / Self-Forcing): timestep t in [0, 1000], sigma = t / 1000,
    x_t = (1 - sigma) x_0 + sigma * eps,      v = eps - x_0,
so x_0 = x_t - sigma v and an Euler step is x_{sigma'} = x_sigma + (sigma' - sigma) v.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Time shift s' = k s / (1 + (k - 1) s): k > 1 spends more steps at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def _bcast(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Sigma of shape (), (B,) or (B, F) broadcast against x (B, F, C, H, W)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return s.reshape(*s.shape, *([1] * (x.ndim - s.ndim)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def x0_from_velocity(xt: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    return xt - _bcast(sigma, xt) * v


def velocity_from_x0(xt: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """Inverse of :func:`x0_from_velocity` (undefined at sigma = 0)."""
    return (xt - x0) / _bcast(sigma, xt).clamp_min(1e-6)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    return x + (_bcast(sigma_next, x) - _bcast(sigma, x)) * v


def cfg(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance v_u + w (v_c - v_u); w = 1 is the conditional prediction."""
    return v_uncond + guidance * (v_cond - v_uncond)


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """``steps + 1`` decreasing sigmas from 1 to 0, uniformly spaced then shifted."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base = torch.linspace(1.0, 0.0, steps + 1)
    return shift_sigma(base, shift)


def sigmas_from_timesteps(timesteps: list[float], shift: float) -> torch.Tensor:
    """Sigmas for an explicit timestep list such as Self-Forcing's [1000, 750, 500, 250], shifted, then 0."""
    t = torch.tensor([*timesteps, 0.0]) / NUM_TRAIN_TIMESTEPS
    return shift_sigma(t, shift)


def sample_training_sigma(n: int, shift: float, generator: torch.Generator | None = None, logit_normal: bool = True):
    """Training noise levels: logit-normal (or uniform) in (0, 1), then shifted."""
    if logit_normal:
        u = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        u = torch.rand(n, generator=generator)
    return shift_sigma(u, shift)
