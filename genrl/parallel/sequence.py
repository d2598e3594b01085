"""Ulysses sequence parallelism for genrl's video DiT, on torch.distributed collectives.

Each of P ranks holds a contiguous slice of the video's frames (the sequence is cut at frame
boundaries, so per-frame modulation stays local). Self-attention is the only place that needs
the whole sequence: q, k and v are projected and rotated (RoPE at their global positions) on the
local tokens, an all-to-all turns "all heads of my tokens" into "my heads of all tokens", attention
runs over the full sequence, and a second all-to-all turns it back. Cross-attention reads the
replicated text with local queries and needs nothing. Frame counts that P does not divide are
padded at the end and the padding is masked out of every key set.

Streaming (a chunk against a KV cache) splits the chunk's frames the same way; after the all-to-all
each rank holds its heads of the whole chunk, so it attends them to its heads of the cached context
and caches only those: the cache is sharded by heads, 1/P on each rank.

It is applied after construction (``apply_sequence_parallel``) by swapping each self-attention's
``core`` and the DiT instance's ``forward``; nothing in the model's own forward knows about it, and
its parameters, state_dict keys and checkpoints stay those of the plain model.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from ..attention import BlockCausal, attention
from ..errors import UsageError


class _AllToAll(torch.autograd.Function):
    """Split ``x`` along ``scatter`` into P parts, send part j to rank j, concatenate what arrives along ``gather``."""

    @staticmethod
    def forward(ctx, x, group, scatter: int, gather: int):
        ctx.group, ctx.scatter, ctx.gather = group, scatter, gather
        return _a2a(x, group, scatter, gather)

    @staticmethod
    def backward(ctx, grad):
        return _a2a(grad, ctx.group, ctx.gather, ctx.scatter), None, None, None


def _a2a(x: torch.Tensor, group, scatter: int, gather: int) -> torch.Tensor:
    world = dist.get_world_size(group)
    parts = [p.contiguous() for p in x.chunk(world, dim=scatter)]
    out = [torch.empty_like(parts[0]) for _ in range(world)]
    dist.all_to_all(out, parts, group=group)
    return torch.cat(out, dim=gather)


def all_to_all(x: torch.Tensor, group, scatter: int, gather: int) -> torch.Tensor:
    """Differentiable all-to-all (its backward is the reverse all-to-all)."""
    return _AllToAll.apply(x, group, scatter, gather)


class _Gather(torch.autograd.Function):
    """All-gather along ``dim``; backward hands each rank the gradient of its own slice (no summing:
    each rank's loss covers only its slice of the output)."""

    @staticmethod
    def forward(ctx, x, group, dim: int):
        ctx.group, ctx.dim = group, dim
        world = dist.get_world_size(group)
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        rank = dist.get_rank(ctx.group)
        return grad.chunk(dist.get_world_size(ctx.group), dim=ctx.dim)[rank].contiguous(), None, None


class _SumGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the group. Put on a replicated input of the split
    region: each rank's gradient of it covers only its own tokens, and the sum is the whole gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _sum_grad(x, group):
    return _SumGrad.apply(x, group) if torch.is_grad_enabled() and x.requires_grad else x


def _sum_param_grads(model: nn.Module, group, skip: nn.Module | None = None) -> None:
    """Make the split model's parameter gradients whole on every rank (a sum over the group in backward), so
    to everything outside it a sequence-parallel model behaves like the plain one. ``skip``'s parameters run
    whole, outside the split, and keep their gradients as they are."""

    def reduce(g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=group)
        return g

    from .shard import SUMMED

    whole = {id(p) for p in skip.parameters()} if skip is not None else set()
    for p in model.parameters():
        if p.requires_grad and id(p) not in whole:
            if hasattr(p, "to_local"):
                raise RuntimeError("parallel.sequence must split a trained model before it is sharded")
            p.register_hook(reduce)
            setattr(p, SUMMED, dist.get_world_size(group))  # train.shard_trained sums them in its reduce-scatter


class UlyssesAttention:
    """Drop-in for ``attention(q, k, v, mask)`` on sequence shards [B, H, N/P, D]: heads <-> sequence all-to-all."""

    def __init__(self, group=None):
        self.group = group
        self.key_mask: torch.Tensor | None = None  # (N,) True for real (not padding) tokens, set per forward
        self.real_tokens: int | None = None  # real tokens of a streamed chunk (the rest is padding), set per forward
        self.active = True  # False: plain attention over whole sequences (a KV-cached decode on one rank)

    def __call__(self, q, k, v, mask=None):
        if not self.active:
            return attention(q, k, v, mask)
        world = dist.get_world_size(self.group)
        if q.shape[1] % world:
            raise UsageError(f"sequence parallelism over {world} ranks needs heads divisible by {world}; "
                             f"the model has {q.shape[1]}")
        q, k, v = (self.heads_of_all_tokens(t) for t in (q, k, v))
        if self.key_mask is not None and isinstance(mask, BlockCausal):
            mask = BlockCausal(mask.block, self.key_mask)
        elif self.key_mask is not None:
            keys = self.key_mask[None, None, None, :]
            mask = keys if mask is None else mask & keys
        return self.all_heads_of_my_tokens(attention(q, k, v, mask))

    def heads_of_all_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, N/P, D] (every head of my tokens) -> [B, H/P, N, D] (my heads of every token)."""
        return all_to_all(x, self.group, scatter=1, gather=2)

    def all_heads_of_my_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The way back: [B, H/P, N, D] -> [B, H, N/P, D]."""
        return all_to_all(x, self.group, scatter=2, gather=1)

    def cached(self, q, k, v, angles, cache, block: int, ctx_angles):
        """Streaming with a head-sharded KV cache: after the all-to-all this rank holds its heads of the
        whole chunk, attends them against its heads of the cached context and caches only those, so each
        rank keeps 1/P of the cache. ``real_tokens`` (set per forward) cuts the chunk's padding."""
        from ..models.dit import cached_attention

        q, k, v = (self.heads_of_all_tokens(t) for t in (q, k, v))
        o = cached_attention(q, k, v, angles, cache, block, ctx_angles, real=self.real_tokens)
        return self.all_heads_of_my_tokens(o)


def _ulysses_cores(blocks: nn.ModuleList, heads: int, what: str, group) -> list[UlyssesAttention]:
    """Swap an all-to-all core into every block's self-attention; refuses heads the group cannot split."""
    world = dist.get_world_size(group)
    if heads % world:
        raise UsageError(f"parallel.sequence={world} needs the {what}'s heads ({heads}) divisible by it")
    cores = [UlyssesAttention(group) for _ in blocks]
    for blk, core in zip(blocks, cores):
        blk.attn.core = core
    return cores


_TOGETHER = [0]


@contextmanager
def every_rank():
    """Marks code that every process of the launch runs at once (a training step). Splits that only speed a
    pass up, and that a single process could run whole, split only inside it; outside (an evaluation the main
    process runs alone) they run whole and wait on no other process."""
    _TOGETHER[0] += 1
    try:
        yield
    finally:
        _TOGETHER[0] -= 1


def ranks_together() -> bool:
    """Inside :func:`every_rank`."""
    return _TOGETHER[0] > 0


def _require_group(size: int, group) -> None:
    have = dist.get_world_size(group) if dist.is_initialized() else 1
    if have != size:
        raise UsageError(f"parallel.sequence={size} needs {size} processes in its group (launch with "
                         f"accelerate launch --num_processes {size} or torchrun); this run has {have}")


def _pad_frames(x: torch.Tensor, t: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Latents (B, F, ...) padded with zero frames to a multiple of ``world``; per-frame timesteps (B, F) repeat
    their last one (one per sample stays as it is). Returns x, t and the frames each rank takes."""
    B, Fr = x.shape[:2]
    per = -(-Fr // world)
    pad = per * world - Fr
    if pad:
        x = torch.cat((x, x.new_zeros(B, pad, *x.shape[2:])), dim=1)
        if t.ndim == 2:
            t = torch.cat((t, t[:, -1:].expand(B, pad)), dim=1)
    return x, t, per


def _real_tokens(frames: int, padded: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """(padded * tokens_per_frame,) True for the tokens of the first ``frames`` frames, False for the padding."""
    return (torch.arange(padded, device=device) < frames).repeat_interleave(tokens_per_frame)


class SequenceParallelDiT:
    """A VideoDiT whose frames are split over the ranks of ``group``; same inputs and output as the model.

    Every rank passes the whole input and gets the whole output; internally each computes only its
    frames. Gradients of replicated inputs (the text) are summed over the group in backward, and
    ``apply_sequence_parallel`` does the same for the model's parameters, so every rank ends a
    backward with the whole gradient, as with the plain model.
    """

    def __init__(self, dit: nn.Module, group=None):
        self.dit, self.group = dit, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.cores = _ulysses_cores(dit.blocks, dit.cfg.heads, "DiT", group)
        for blk, core in zip(dit.blocks, self.cores):
            blk.attn.cached_core = core.cached

    def local_frames(self, frames: int) -> slice:
        """The output frames this rank computes (and owns the loss of)."""
        per = -(-frames // self.world)
        return slice(min(frames, self.rank * per), min(frames, (self.rank + 1) * per))

    def _split(self, x, t):
        """Pad the frames to a multiple of P; return padded x, t (one per frame), frames per rank and this rank's
        first frame."""
        B, Fr = x.shape[:2]
        x, t, per = _pad_frames(x, t.expand(B, Fr) if t.ndim == 2 else t[:, None].expand(B, Fr), self.world)
        return x, t, per, self.rank * per

    def forward(self, x, t, text, text_mask, causal: bool = False, cache=None):
        if cache is not None:
            return self.forward_cached(x, t, text, text_mask, cache)
        dit, P = self.dit, self.world
        B, Fr, C, H, W = x.shape
        x, t, per, lo = self._split(x, t)
        pad = per * P - Fr
        p = dit.cfg.patch
        tpf = (H // p) * (W // p)
        real = _real_tokens(Fr, per * P, tpf, x.device)
        for core in self.cores:
            core.key_mask = real if pad else None
        x, text = _sum_grad(x, self.group), _sum_grad(text, self.group)
        out = dit.forward_frames(x[:, lo : lo + per], t[:, lo : lo + per], text, text_mask, causal,
                                 frame_offset=lo)
        full = _Gather.apply(out, self.group, 1)
        return full[:, :Fr]

    def forward_cached(self, x, t, text, text_mask, cache):
        """One streamed chunk against a head-sharded KV cache: this rank embeds its frames of the chunk, the
        attention cores exchange heads for tokens and each keeps its heads of the context (see
        ``UlyssesAttention.cached``), and the output is gathered whole on every rank."""
        dit = self.dit
        B, Fr, C, H, W = x.shape
        x, t, per, lo = self._split(x, t)
        # the context's frames at 0..n_ctx-1, the whole chunk (padding last) after them
        angles, ctx_angles = dit.chunk_angles(cache.frames, per * self.world, (H, W), x.device)
        for core in self.cores:
            core.real_tokens = Fr * (H // dit.cfg.patch) * (W // dit.cfg.patch)
        out = dit._run(x[:, lo : lo + per], t[:, lo : lo + per], angles, _sum_grad(text, self.group), text_mask,
                       None, cache, ctx_angles)
        return _Gather.apply(out, self.group, 1)[:, :Fr]

    __call__ = forward


class SequenceParallelWanDiT:
    """A Wan2.1 transformer (``WanDiT``) whose frames are split over the ranks of ``group``: whole-video passes.

    As :class:`SequenceParallelDiT`: every rank passes the whole input and gets the whole output, computing
    only its frames. diffusers' transformer runs unchanged on the rank's frames (its patches are one frame
    deep, so the patch embedding, timestep modulation and output projection are frame-local); RoPE takes
    the frames' global positions, and each block's self-attention runs through the all-to-all. A streamed
    chunk against a KV cache splits the same way, and each rank keeps its heads of the cache (1/P of it).
    """

    def __init__(self, dit: nn.Module, group=None):
        self.dit, self.group = dit, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        cfg = dit.transformer.config
        if cfg.num_attention_heads % self.world:
            raise UsageError(f"parallel.sequence={self.world} needs the Wan2.1 transformer's heads "
                             f"({cfg.num_attention_heads}) divisible by it")
        if cfg.patch_size[0] != 1:
            raise UsageError(f"parallel.sequence splits frames; this transformer's patches are {cfg.patch_size[0]} "
                             "frames deep (Wan2.1's are 1)")
        self.core = UlyssesAttention(group)

    def forward(self, x, t, text, text_mask=None, causal: bool = False, cache=None):
        dit, P = self.dit, self.world
        B, Fr, C, H, W = x.shape
        x, t, per = _pad_frames(x, t, P)  # one timestep per sample stays one (diffusers' path for it)
        pad, lo = per * P - Fr, self.rank * per
        if t.ndim == 2:
            t = t[:, lo : lo + per]
        tpf = dit.tokens_per_frame(H, W)
        x, text = _sum_grad(x, self.group), _sum_grad(text, self.group)
        if cache is not None:  # the whole chunk (padding last) after the context
            layout = {**dit.cache_layout(cache, per * P, x), "attend": self.core, "real": Fr * tpf}
        else:
            keys = _real_tokens(Fr, per * P, tpf, x.device) if pad else None
            if causal:
                mask = dit.block_causal(tpf, keys)
            else:
                mask = None if keys is None else keys[None, None, None, :]
            layout = {"cache": None, "mask": mask, "attend": self.core, "frames": (per * P, lo)}
        out = dit.run(x[:, lo : lo + per], t, text, layout)
        return _Gather.apply(out, self.group, 1)[:, :Fr]

    __call__ = forward


def apply_sequence_parallel(dit: nn.Module, size: int, group=None) -> nn.Module:
    """Make a VideoDiT, or a ``WanDiT``'s whole-video passes, sequence-parallel over the ``size`` ranks of
    ``group`` (``parallel.sequence``), in place."""
    from ..models.wan import WanDiT

    if size <= 1:
        return dit
    _require_group(size, group)
    sp = (SequenceParallelWanDiT if isinstance(dit, WanDiT) else SequenceParallelDiT)(dit, group)
    dit.forward = sp.forward  # the instance's forward: same module, parameters and state_dict
    _sum_param_grads(dit, group)
    return dit


def sequence_groups(size: int):
    """This process's sequence-parallel group: consecutive ranks [k*size, (k+1)*size); data parallel across them.

    Every process creates every group (torch.distributed requires it) and keeps its own."""
    world = dist.get_world_size()
    if world % size:
        raise UsageError(f"parallel.sequence={size} must divide the number of processes ({world})")
    mine = None
    for k in range(world // size):
        g = dist.new_group(list(range(k * size, (k + 1) * size)))
        if dist.get_rank() // size == k:
            mine = g
    return mine


class _SequenceParallelVLM:
    """TinyVLM's training / scoring pass (no KV cache) with its token sequence split over the ranks.

    Keys and values are repeated to the query heads before the all-to-all (KV-head replication), so
    any head count divisible by the group size works whatever the number of KV heads."""

    def __init__(self, vlm: nn.Module, group=None):
        self.vlm, self.group = vlm, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.cores = _ulysses_cores(vlm.blocks, vlm.cfg.heads, "VLM", group)
        self.plain = vlm._run_blocks

    def run_blocks(self, x, angles, mask, caches=None):
        if caches is not None:  # KV-cached sampling runs whole on every rank of the group (same seeds, same tokens)
            for core in self.cores:
                core.active = False
            try:
                return self.plain(x, angles, mask, caches)
            finally:
                for core in self.cores:
                    core.active = True
        B, L, D = x.shape
        per = -(-L // self.world)
        pad = per * self.world - L
        if pad:
            x = torch.cat((x, x.new_zeros(B, pad, D)), dim=1)
            angles = torch.cat((angles, angles.new_zeros(*angles.shape[:2], pad, angles.shape[-1])), dim=2)
            if not isinstance(mask, BlockCausal):  # a causal pattern already hides the trailing padding from real queries
                mask = torch.nn.functional.pad(mask, (0, pad, 0, pad), value=False)
                mask[..., L:, :] = True  # padded queries attend to anything (their rows are dropped); keys stay masked
        lo = self.rank * per
        x = _sum_grad(x, self.group)
        y = self.plain(x[:, lo : lo + per], angles[:, :, lo : lo + per], mask)
        return _Gather.apply(y, self.group, 1)[:, :L]


def apply_sequence_parallel_vlm(vlm: nn.Module, size: int, group=None) -> nn.Module:
    """Make a TinyVLM's full passes (log-probs, SFT/GRPO losses) sequence-parallel over ``size`` ranks, in place."""
    if size <= 1:
        return vlm
    _require_group(size, group)
    sp = _SequenceParallelVLM(vlm, group)
    vlm._run_blocks = sp.run_blocks
    _sum_param_grads(vlm.blocks, group)  # only the blocks run split; embeddings and the head run whole
    return vlm


def make_sequence_parallel(model: nn.Module, size: int, group=None) -> nn.Module:
    """``parallel.sequence`` for any model genrl can split: its video DiT, a Wan2.1 transformer, its tiny VLM or a
    transformers Qwen2-VL / Qwen2.5-VL policy."""
    from ..models.dit import VideoDiT
    from ..models.hf_vlm import QwenVLPolicy
    from ..models.vlm import TinyVLM
    from ..models.wan import WanDiT

    if isinstance(model, (VideoDiT, WanDiT)):
        return apply_sequence_parallel(model, size, group)
    if isinstance(model, TinyVLM):
        return apply_sequence_parallel_vlm(model, size, group)
    if isinstance(model, QwenVLPolicy):
        from .qwen import apply_sequence_parallel_qwen

        return apply_sequence_parallel_qwen(model, size, group)
    raise UsageError(f"parallel.sequence={size}: {type(model).__name__} has no sequence-parallel form in genrl yet; "
                     "valid: 1")
