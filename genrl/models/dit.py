"""A video DiT in the Wan2.1 family's shape, with bidirectional and block-causal modes.

Patch embedding over latent frames, self-attention with 3-D RoPE and q/k
RMS-norm, cross-attention to text tokens, AdaLN modulation from a per-frame
timestep (a shared projection plus a learned per-block table, as in Wan), and a
flow-matching velocity head.

The same weights run three ways:
- ``forward(x, t, ...)``                 bidirectional (teacher, critic);
- ``forward(x, t, ..., causal=True)``    block-causal over chunks of frames (student training);
- ``forward(chunk, t, ..., cache=c)``    one chunk against a :class:`KVCache` (streaming).

The cache keeps keys un-rotated and applies RoPE at use, so for videos longer
than the window it can keep the first ``sink_frames`` and the most recent
frames and give them contiguous positions: every chunk sees the same position
layout it saw in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import BlockCausal, attention


@dataclass
class DiTConfig:
    """Video DiT hyper-parameters."""

    in_channels: int = 4
    """Latent channels."""
    patch: int = 2
    """Spatial patch size (temporal patch is 1: one latent frame per token row)."""
    dim: int = 128
    """Transformer width."""
    depth: int = 6
    """Number of blocks."""
    heads: int = 4
    """Attention heads (head dim = dim / heads, must be divisible by 6 pairs for 3-D RoPE)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    text_dim: int = 128
    """Width of the text features cross-attention reads."""
    chunk_frames: int = 3
    """Latent frames per chunk in block-causal mode."""
    rope_theta: float = 10000.0
    """RoPE base."""


# ----------------------------------------------------------------------------- rope
def _rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim split into (time, height, width) parts, each even (Wan's split)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Angles (N, head_dim/2) for integer positions pos (N, 3) = (frame, row, col)."""
    parts = []
    for axis, d in enumerate(_rope_split(head_dim)):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=pos.device) / d)
        parts.append(pos[:, axis, None].float() * freqs)
    return torch.cat(parts, dim=-1)


def rope_table(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of RoPE angles, computed once per forward and shared by every block."""
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, angles) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, N, D) by angles (N, D/2), or by their (cos, sin) table."""
    x2 = x.float().unflatten(-1, (-1, 2))
    cos, sin = angles if isinstance(angles, tuple) else rope_table(angles)
    a, b = x2[..., 0], x2[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)


def token_positions(frames: int, rows: int, cols: int, frame_offset: int = 0, device=None) -> torch.Tensor:
    f, r, c = torch.meshgrid(
        torch.arange(frame_offset, frame_offset + frames, device=device),
        torch.arange(rows, device=device),
        torch.arange(cols, device=device),
        indexing="ij",
    )
    return torch.stack((f, r, c), dim=-1).reshape(-1, 3)


# ---------------------------------------------------------------------------- cache
class KVCache:
    """Per-block self-attention keys/values of past clean frames, plus text keys/values.

    Holds at most ``local_frames - chunk_frames`` frames: the first ``sink_frames``
    forever and the most recent ones, so each chunk attends to at most
    ``local_frames`` frames and memory stays constant as the video grows.
    """

    def __init__(self, depth: int, tokens_per_frame: int, chunk_frames: int, local_frames: int, sink_frames: int = 0):
        if local_frames < chunk_frames + sink_frames:
            raise ValueError("local_frames must cover sink_frames plus one chunk")
        self.depth, self.tpf, self.chunk = depth, tokens_per_frame, chunk_frames
        self.local, self.sink = local_frames, sink_frames
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth
        self.text: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self.frame_ids: list[int] = []  # absolute frame index of each cached frame
        self.writing = False

    @property
    def frames(self) -> int:
        return len(self.frame_ids)

    @property
    def next_frame(self) -> int:
        return self.frame_ids[-1] + 1 if self.frame_ids else 0

    def context(self, block: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.k[block], self.v[block]

    def append(self, block: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a chunk's un-rotated keys/values, evicting old non-sink frames past the bound."""
        ck, cv = self.k[block], self.v[block]
        ck = k if ck is None else torch.cat((ck, k), dim=2)
        cv = v if cv is None else torch.cat((cv, v), dim=2)
        n = ck.shape[2] // self.tpf
        keep = self.local - self.chunk
        if n > keep:
            idx = torch.cat((torch.arange(self.sink), torch.arange(n - (keep - self.sink), n))) * self.tpf
            idx = (idx[:, None] + torch.arange(self.tpf)).reshape(-1).to(ck.device)
            ck, cv = ck.index_select(2, idx), cv.index_select(2, idx)
        self.k[block], self.v[block] = ck, cv
        if block == self.depth - 1:
            new = k.shape[2] // self.tpf
            ids = self.frame_ids + list(range(self.next_frame, self.next_frame + new))
            if len(ids) > keep:  # sinks + the last (keep - sink) frames; slice by index, as [-0:] would keep all
                ids = ids[: self.sink] + ids[len(ids) - (keep - self.sink) :]
            self.frame_ids = ids


# --------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)
        self.core = attention
        """Softmax attention over [B, H, N, D] (sequence parallelism swaps in its all-to-all version)."""
        self.cached_core = cached_attention
        """A chunk's attention against a :class:`KVCache` (sequence parallelism swaps in a head-sharded cache)."""

    def forward(self, x, angles, mask=None, cache: KVCache | None = None, block: int = 0, ctx_angles=None):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is None:
            o = self.core(apply_rope(q, angles), apply_rope(k, angles), v, mask)
        else:
            o = self.cached_core(q, k, v, angles, cache, block, ctx_angles)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


def cached_attention(q, k, v, angles, cache: KVCache, block: int, ctx_angles, real: int | None = None,
                     context: tuple | None = None) -> torch.Tensor:
    """A chunk's un-rotated q/k/v [B, H, N, D] against the cached context: RoPE at use, attention over
    context + chunk, and (when the cache is writing) the chunk's keys/values appended.

    ``real``: only the first ``real`` chunk tokens are real (the rest is padding, e.g. of a chunk split over
    sequence-parallel ranks): padding is kept out of every key set and out of the cache. ``context``: the
    block's cached (k, v) as read when the forward began (default: the cache's now), for a caller whose
    activation checkpointing re-runs the block after the cache has grown."""
    ck, cv = context if context is not None else cache.context(block)
    kk = k if ck is None else torch.cat((ck, k), dim=2)
    vv = v if cv is None else torch.cat((cv, v), dim=2)
    mask = None
    if real is not None and real < k.shape[2]:
        mask = (torch.arange(kk.shape[2], device=kk.device) < kk.shape[2] - k.shape[2] + real)[None, None, None, :]
    o = attention(apply_rope(q, angles), apply_rope(kk, ctx_angles), vv, mask)
    if cache.writing:
        cache.append(block, k[:, :, :real].detach(), v[:, :, :real].detach())
    return o


class CrossAttention(nn.Module):
    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)

    def text_kv(self, text):
        B, L, _ = text.shape
        k, v = self.kv(text).view(B, L, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.k_norm(k), v

    def forward(self, x, text, text_mask, cache: KVCache | None = None, block: int = 0):
        B, N, D = x.shape
        q = self.q_norm(self.q(x).view(B, N, self.heads, -1).transpose(1, 2))
        cached = cache.text[block] if cache is not None else None
        # Text keys/values cached by a no-grad pass carry no graph: a pass that trains this
        # layer recomputes them, or kv and k_norm would learn only on exit step 0.
        if cached is not None and not (torch.is_grad_enabled() and self.kv.weight.requires_grad):
            k, v = cached
        else:
            k, v = self.text_kv(text)
            if cache is not None and cached is None:
                cache.text[block] = (k.detach(), v.detach())
        mask = text_mask[:, None, None, :] | ~text_mask.any(dim=1)[:, None, None, None]
        o = attention(q, k, v, mask)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d, cfg.heads)
        self.norm_x = nn.LayerNorm(d, eps=1e-6)
        self.cross = CrossAttention(d, cfg.text_dim, cfg.heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.modulation = nn.Parameter(torch.randn(6, d) / d**0.5)

    def forward(self, x, e, angles, text, text_mask, mask=None, cache=None, block=0, ctx_angles=None):
        # e: (B, F, 6, D) per-frame time modulation from the shared projection, broadcast over each frame's tokens
        sh1, sc1, g1, sh2, sc2, g2 = (e + self.modulation).unbind(dim=2)
        x = x + _per_frame(g1, self.attn(_modulate(self.norm1(x), sc1, sh1), angles, mask, cache, block, ctx_angles))
        x = x + self.cross(self.norm_x(x), text, text_mask, cache, block)
        return x + _per_frame(g2, self.mlp(_modulate(self.norm2(x), sc2, sh2)))


def _per_frame(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """scale (B, F, D) times tokens x (B, F * tokens_per_frame, D), frame by frame, without repeating scale."""
    return (scale[:, :, None] * x.unflatten(1, (scale.shape[1], -1))).flatten(1, 2)


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift with per-frame scale and shift (B, F, D) over tokens x (B, N, D)."""
    return (x.unflatten(1, (scale.shape[1], -1)) * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps in [0, 1000], any shape -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)


# ---------------------------------------------------------------------------- model
class VideoDiT(nn.Module):
    """Predicts the flow-matching velocity of latent video (B, F, C, h, w) at timesteps t (B,) or (B, F)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if (cfg.dim // cfg.heads) % 2 or cfg.dim % cfg.heads:
            raise ValueError("dim must split into heads of even size")
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch
        self.patch_embed = nn.Linear(cfg.in_channels * p * p, d)
        self.time_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.head_modulation = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.head = nn.Linear(d, cfg.in_channels * p * p)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.time_proj[1].weight)
        nn.init.zeros_(self.time_proj[1].bias)

    # -- helpers
    def _patchify(self, x):
        B, Fr, C, H, W = x.shape
        p = self.cfg.patch
        x = x.reshape(B, Fr, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(B, Fr * (H // p) * (W // p), C * p * p)

    def _unpatchify(self, tokens, Fr, H, W):
        B = tokens.shape[0]
        p, C = self.cfg.patch, self.cfg.in_channels
        x = tokens.reshape(B, Fr, H // p, W // p, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, Fr, C, H, W)

    def new_cache(self, latent_hw: tuple[int, int], local_frames: int, sink_frames: int = 0) -> KVCache:
        tpf = (latent_hw[0] // self.cfg.patch) * (latent_hw[1] // self.cfg.patch)
        return KVCache(self.cfg.depth, tpf, self.cfg.chunk_frames, local_frames, sink_frames)

    # -- forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        if cache is None:
            return self.forward_frames(x, t, text, text_mask, causal)
        angles, ctx_angles = self.chunk_angles(cache.frames, x.shape[1], x.shape[-2:], x.device)
        return self._run(x, t, angles, text, text_mask, None, cache, ctx_angles)

    def chunk_angles(self, n_ctx: int, frames: int, hw, device=None):
        """RoPE tables of a chunk of ``frames`` latent frames after ``n_ctx`` cached ones: the context gets
        contiguous positions 0..n_ctx-1 and the chunk the next ones. Returns (chunk's, context + chunk's)."""
        p, hd = self.cfg.patch, self.cfg.dim // self.cfg.heads
        rows, cols = hw[0] // p, hw[1] // p
        pos = token_positions(n_ctx + frames, rows, cols, device=device)
        ctx_angles = rope_table(rope_angles(pos, hd, self.cfg.rope_theta))
        return tuple(a[n_ctx * rows * cols :] for a in ctx_angles), ctx_angles

    def forward_frames(self, x, t, text, text_mask, causal: bool = False, frame_offset: int = 0) -> torch.Tensor:
        """Frames ``frame_offset ..`` of a video (the whole video by default): RoPE at their global positions,
        the (block-causal) mask over the whole sequence. Sequence parallelism runs each rank's slice through
        this, with attention cores that gather every token (so they, not this slice, see the whole length)."""
        B, Fr, C, H, W = x.shape
        p, hd = self.cfg.patch, self.cfg.dim // self.cfg.heads
        rows, cols = H // p, W // p
        pos = token_positions(Fr, rows, cols, frame_offset=frame_offset, device=x.device)
        angles = rope_table(rope_angles(pos, hd, self.cfg.rope_theta))
        mask = BlockCausal(self.cfg.chunk_frames * rows * cols) if causal else None
        return self._run(x, t, angles, text, text_mask, mask, None, None)

    def _run(self, x, t, angles, text, text_mask, mask, cache, ctx_angles) -> torch.Tensor:
        B, Fr, C, H, W = x.shape
        tokens = self.patch_embed(self._patchify(x))
        t = t.expand(B, Fr) if t.ndim == 2 else t[:, None].expand(B, Fr)
        temb = self.time_embed(timestep_embedding(t, 256))  # (B, F, D)
        e = self.time_proj(temb).unflatten(-1, (6, -1))  # (B, F, 6, D), one row per frame
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, e, angles, text, text_mask, mask, cache, i, ctx_angles)
        sh, sc = (temb[:, :, None] + self.head_modulation).unbind(dim=2)
        out = self.head(_modulate(self.norm_out(tokens), sc, sh))
        return self._unpatchify(out, Fr, H, W)
