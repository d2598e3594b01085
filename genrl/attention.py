"""The one attention dispatch point.

``attention(q, k, v, mask)`` takes [B, H, N, D] tensors. On a GPU with
flash-attn (no mask) or xformers installed, those kernels run; everywhere else
torch's scaled_dot_product_attention. Nothing here requires a GPU package.

A block-causal pattern (a streaming student's chunks) is passed as :class:`BlockCausal`
rather than a dense mask: each query block attends to its key prefix without a mask, so no
(N, N) mask is built or kept for backward (at 2,048 tokens the dense one was the largest
tensor a DiT layer saved, 16 MB).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BlockCausal:
    """Query token i sees key j iff j // block <= i // block (and ``keys[j]``, when given: padding is False)."""

    block: int
    """Tokens per block (frames per chunk x tokens per frame)."""
    keys: torch.Tensor | None = None
    """(N,) boolean, True for real keys; None: every key is real."""

    def dense(self, n: int, device=None) -> torch.Tensor:
        """The same pattern as an (N, N) boolean mask."""
        blk = torch.arange(n, device=device) // self.block
        m = blk[:, None] >= blk[None, :]
        return m if self.keys is None else m & self.keys[None, :]


def block_causal_attention(q, k, v, pattern: BlockCausal) -> torch.Tensor:
    """Attention of each query block against its key prefix; no dense mask (see :class:`BlockCausal`)."""
    n, out = q.shape[2], []
    for s in range(0, n, pattern.block):
        e = min(s + pattern.block, n)
        keys = None if pattern.keys is None or bool(pattern.keys[:e].all()) else pattern.keys[None, None, None, :e]
        out.append(attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], keys))
    return torch.cat(out, dim=2)


def _causal(q, k, v) -> torch.Tensor:
    """Token-causal attention (blocks of one token) by the kernels' own causal mode: no mask is built."""
    if resolve_backend(q, None) == "flash":
        from flash_attn import flash_attn_func

        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


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
    """Softmax attention over [B, H, N, D]; ``mask`` is boolean (True = attend), broadcastable to [B, H, Nq, Nk],
    or a :class:`BlockCausal` pattern."""
    if isinstance(mask, BlockCausal):
        if mask.block == 1 and mask.keys is None and q.shape[2] == k.shape[2]:
            return _causal(q, k, v)
        return block_causal_attention(q, k, v, mask)
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
