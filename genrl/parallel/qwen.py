"""Ulysses sequence parallelism for a transformers Qwen2-VL / Qwen2.5-VL policy (``QwenVLPolicy``).

The language model's teacher-forced pass (GRPO's and SFT's scoring of prompt + completion; the
sequence is the chat template with every video token in it) is cut into P contiguous token slices.
Each rank runs transformers' own decoder layers on its slice: the M-RoPE positions are the whole
sequence's, sliced, so rotary embeddings are those of the unsplit pass. Attention is the only step
that needs every token; it goes through an attention function registered in transformers'
``AttentionInterface``: q, k and v of my tokens are exchanged for my heads of every token (KV heads
travel as they are when P divides them, else repeated to the query heads first), attention runs
causally over the whole sequence with its padding masked, and the result comes back.

The split state (the group and the whole sequence's key mask) travels as a keyword argument of the
language model's forward, which transformers hands to every attention call, activation-checkpoint
recomputation included; a pass without it (KV-cached sampling, which runs whole on every rank with
the same seeds) falls through to the model's own attention implementation.

The vision tower splits by frames (:class:`SequenceParallelQwenVision`): it attends within each 2-frame
temporal patch, so each rank encodes its share of a clip's temporal patches and the embeddings are
gathered, exact, with 1/P of the tower's work on each rank. It splits inside training steps only
(:func:`genrl.parallel.sequence.every_rank`): an evaluation on the main process alone encodes whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..attention import BlockCausal, attention, resolve_backend
from ..errors import UsageError
from .sequence import _Gather, _require_group, _sum_grad, _sum_param_grads, all_to_all, ranks_together

NAME = "genrl_ulysses"


@dataclass(frozen=True)
class _Split:
    """One split pass, as every attention layer of it reads it."""

    group: object
    pattern: torch.Tensor | BlockCausal
    """Whom each query of the whole (padded) sequence attends to (see :func:`_causal_pattern`)."""


def _causal_pattern(keys: torch.Tensor, length: int) -> torch.Tensor | BlockCausal:
    """Causal attention over a sequence whose real tokens are ``keys`` (B, L'), the first ``length`` of them
    before the sequence-parallel padding. Token-causal without a mask when no row is padded before it (a
    causal query never sees the padding after it: the kernels' causal mode); else (B, 1, L', L'): causal,
    real keys only, each token always seeing itself (so padded rows stay finite)."""
    if bool(keys[:, :length].all()):
        return BlockCausal(1)
    L, dev = keys.shape[1], keys.device
    causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
    return (causal & keys[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=dev)


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, genrl_split=None,
               **kwargs):
    """transformers' attention-function signature: [B, H, n, D] in, ([B, n, H, D], None) out."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if genrl_split is None:  # not a split pass: the implementation the model was loaded with
        plain = ALL_ATTENTION_FUNCTIONS[module.genrl_plain_attention]
        return plain(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    group = genrl_split.group
    world = dist.get_world_size(group)
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads % world:  # KV heads the ranks cannot share: repeat them to the query heads (GQA replication)
        key, value = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (key, value))
    q, k, v = (all_to_all(t, group, scatter=1, gather=2) for t in (query, key, value))
    rep = q.shape[1] // k.shape[1]  # my query heads share my KV heads in the model's order
    pattern = genrl_split.pattern
    causal = isinstance(pattern, BlockCausal)
    default_kernel = dropout == 0 and scaling in (None, q.shape[-1] ** -0.5)  # what genrl's dispatch computes
    if default_kernel and resolve_backend(q, None if causal else pattern) != "sdpa":  # flash-attn / xformers
        if rep > 1:
            k, v = (t.repeat_interleave(rep, dim=1) for t in (k, v))
        o = attention(q, k, v, pattern)
    else:  # torch's kernel, which takes the shared KV heads as they are (nothing repeated is kept for backward)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else pattern, is_causal=causal,
                                           dropout_p=dropout, scale=scaling, enable_gqa=rep > 1)
    return all_to_all(o, group, scatter=2, gather=1).transpose(1, 2).contiguous(), None


def _register(plain: str) -> str:
    """Register the split attention under a name whose mask builder is ``plain``'s (for unsplit passes)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = f"{NAME}_{plain}"
    AttentionInterface.register(name, _attention)
    if plain in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[plain])
    return name


class SequenceParallelQwenLM:
    """A transformers Qwen2-VL / Qwen2.5-VL language model's pass over whole sequences (``QwenVLPolicy.hidden``)
    with the tokens split over the ranks of ``group``; every rank passes and gets whole sequences."""

    def __init__(self, lm: nn.Module, group=None):
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        heads = lm.config.num_attention_heads
        if heads % self.world:
            raise UsageError(f"parallel.sequence={self.world} needs the language model's heads ({heads}) divisible by it")
        plain = lm.config._attn_implementation or "eager"
        if plain.startswith(NAME):
            raise UsageError("parallel.sequence: this policy is already split")
        for m in lm.modules():
            if hasattr(m, "num_key_value_groups"):  # its attention layers
                # eager's function lives in each model's module, not in the interface; torch's kernel with the
                # same (eager-built) mask computes the same attention
                m.genrl_plain_attention = plain if plain != "eager" else "sdpa"
        lm.config._attn_implementation = _register(plain)
        self.lm = lm

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        B, L, D = embeds.shape
        per = -(-L // self.world)
        pad = per * self.world - L
        embeds = _sum_grad(embeds, self.group)  # each rank's gradient covers its tokens; the sum is the whole
        keys = mask.bool()
        if pad:
            embeds = torch.cat((embeds, embeds.new_zeros(B, pad, D)), dim=1)
            positions = torch.cat((positions, positions[..., -1:].expand(*positions.shape[:-1], pad)), dim=-1)
            keys = F.pad(keys, (0, pad), value=False)
        lo = self.rank * per
        out = self.lm(inputs_embeds=embeds[:, lo : lo + per], position_ids=positions[..., lo : lo + per],
                      attention_mask=None, use_cache=False,
                      genrl_split=_Split(self.group, _causal_pattern(keys, L)))  # built once for every layer
        return _Gather.apply(out.last_hidden_state, self.group, 1)[:, :L]


class SequenceParallelQwenVision:
    """``QwenVLPolicy.encode_video`` with each clip's frames split over the ranks of ``group`` (LongVILA-R1's
    parallel video encoding): Qwen2-VL's vision tower attends within each 2-frame temporal patch and its
    rotary positions are spatial, so each rank encodes its temporal patches alone and the embeddings, in
    the tower's temporal-major order, are gathered whole on every rank."""

    def __init__(self, policy: nn.Module, group=None):
        self.encode, self.group = policy.encode_video, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.temporal = policy.vision_cfg.temporal_patch_size

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        if not ranks_together():  # e.g. the main process's evaluation: the others are not there to gather with
            return self.encode(videos)
        B, Fr = videos.shape[:2]
        groups = -(-Fr // self.temporal)
        per = -(-groups // self.world)
        # the tower's own padding (the last frame repeated to a whole temporal patch), then whole patches of it
        # until every rank has as many; the extra patches' tokens are dropped after the gather
        pad = per * self.world * self.temporal - Fr
        if pad:
            videos = torch.cat((videos, videos[:, -1:].expand(B, pad, *videos.shape[2:])), dim=1)
        lo = self.rank * per * self.temporal
        mine = self.encode(videos[:, lo : lo + per * self.temporal])  # (B, per * tokens a patch, hidden)
        tokens = mine.shape[1] // per * groups
        return _Gather.apply(mine, self.group, 1)[:, :tokens]


def apply_sequence_parallel_qwen(policy: nn.Module, size: int, group=None) -> nn.Module:
    """Make a ``QwenVLPolicy`` sequence-parallel over ``size`` ranks, in place: the language model's layers and
    final norm run on each rank's tokens, the vision tower on each rank's frames, and both end backward with
    whole gradients (summed over the group: a backward runs on every rank, as in a training step)."""
    if size <= 1:
        return policy
    _require_group(size, group)
    sp = SequenceParallelQwenLM(policy.language_model, group)
    policy.hidden = sp.hidden
    _sum_param_grads(sp.lm, group, skip=policy.model.get_input_embeddings())  # the embeddings run whole
    policy.encode_video = SequenceParallelQwenVision(policy, group).encode_video
    _sum_param_grads(policy.visual, group)
    return policy
