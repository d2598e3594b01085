"""The one attention dispatch point.

``attention(q, k, v, mask)`` takes [B, H, N, D] tensors. On a GPU with
flash-attn (no mask) or xformers installed, those kernels run; everywhere else
torch's scaled_dot_product_attention. Nothing here requires a GPU package.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash", "xformers")
_backend = "auto"


def set_backend(name: str) -> None:
    """Force a backend ('auto' picks the fastest available one)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(BACKENDS)}")
    _backend = name


@cache
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend(q: torch.Tensor, mask: torch.Tensor | None) -> str:
    if _backend != "auto":
        return _backend
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        if mask is None and _has("flash_attn"):
            return "flash"
        if _has("xformers"):
            return "xformers"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over [B, H, N, D]; ``mask`` is boolean (True = attend), broadcastable to [B, H, Nq, Nk]."""
    backend = resolve_backend(q, mask)
    if backend == "flash":
        from flash_attn import flash_attn_func

        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    if backend == "xformers":
        import xformers.ops as xops

        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
