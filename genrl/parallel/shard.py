"""Sharding models over the processes of a launch (PyTorch FSDP2's ``fully_shard``).

Every data-parallel process holds a whole copy of each model unless told otherwise: a 14B Wan2.1 teacher is
26.6 GiB in bf16 on each GPU; a 7B Qwen2-VL policy trained in float32 holds 28 GiB of weights, 28 of
gradients and 56 of AdamW state. Sharded block by block, each process keeps 1/N of the weights (and of a
trained model's gradients and optimizer state) and gathers one block at a time while the model runs, freeing
it again after, so its outputs are exactly those of the whole model.

Units: each element of every ``blocks`` or ``layers`` list (the DiT's and Wan2.1's blocks, the policies'
decoder layers and vision blocks) is one; the rest of the weights (embeddings, heads, norms) form the root's.
The root gathers on ``forward`` and on the methods genrl calls instead (a DiT's ``forward_frames`` / ``run``, a
policy's ``SHARD_METHODS``); none of those may call another, or the inner call would free the root's weights
under the outer one.

A trained model split by ``parallel.sequence`` first: each process's gradients of the split layers cover its
own tokens, and the split sums them over its group with hooks on the parameters, which FSDP replaces. Sharded,
those sums ride in FSDP's reduce-scatter instead: a unit whose weights the split sums divides the sum over
all W processes by W / S (S the group's size), not W, which is the mean over the W / S data-parallel replicas
of each group's summed gradient; weights that run whole on every rank of a group (embeddings, the LM head)
keep the plain mean. A weight outside the blocks that the split sums (Qwen's final norm) becomes a unit of
its own, so no unit mixes the two.

Gathered in a lower precision (``gather``, a trained model under ``accelerate launch --mixed_precision bf16``):
each unit casts its float32 shards to bfloat16 before the all-gather, so the weights it holds whole while it
runs, and the traffic, are half; its gradients come out in bfloat16 and are cast back to float32 before
the reduce-scatter, so the sums and the shards, the optimizer's master weights and AdamW's moments stay in
float32. Autocast would have cast those weights to bfloat16 for its matrix products anyway.
"""

from __future__ import annotations

import torch
from torch import nn

FORWARD_METHODS = ("forward_frames", "run")
"""Methods other than ``forward`` that run a DiT's weights: they gather like ``forward`` does."""
UNIT_LISTS = ("blocks", "layers")
"""Names of the module lists whose elements are units of their own."""
SUMMED = "_genrl_summed_over"
"""Attribute ``parallel.sequence`` sets on a trained parameter whose gradient it sums over a group: the size."""


def units(module: nn.Module) -> list[nn.Module]:
    """Every element of each ``blocks`` / ``layers`` list under ``module``, each once; then each other module
    holding weights whose gradients ``parallel.sequence`` sums (see the module's docstring)."""
    out: list[nn.Module] = []
    for name, child in module.named_modules():
        if name.rsplit(".", 1)[-1] in UNIT_LISTS and isinstance(child, nn.ModuleList):
            out.extend(b for b in child if all(b is not o for o in out))
    covered = {id(p) for u in out for p in u.parameters()}
    for child in module.modules():
        own = [p for p in child.parameters(recurse=False) if id(p) not in covered]
        if child is not module and any(hasattr(p, SUMMED) for p in own):
            out.append(child)
            covered.update(id(p) for p in child.parameters())
    return out


def _divide_factor(params: list, world: int) -> float | None:
    """What FSDP divides a unit's summed gradients by: W / S for weights the split sums over groups of S, None
    (W, the mean) for the rest; a unit must not mix the two."""
    sizes = {getattr(p, SUMMED, None) for p in params if p.requires_grad}
    if len(sizes) > 1:
        raise RuntimeError("a sharded unit mixes weights parallel.sequence sums with weights it runs whole")
    size = sizes.pop() if sizes else None
    return world / size if size else None


def shard(module: nn.Module, gather: torch.dtype | None = None) -> nn.Module:
    """Shard ``module`` in place over the default process group: each of its :func:`units` on its own, the
    remaining weights as the root's unit; each is gathered for its forward (the root's for ``forward`` and the
    module's ``SHARD_METHODS``, else :data:`FORWARD_METHODS`) and freed after it. A trained module's gradients
    are reduce-scattered (averaged over the processes) as backward leaves each unit. ``gather``: the dtype the
    weights are gathered and run in when it is not theirs (the root casts its floating inputs to it and its
    outputs back; gradients are reduced in the weights' own dtype); None, their own. Returns ``module``."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    world = dist.get_world_size()
    own = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    in_block = at_root = MixedPrecisionPolicy()  # FSDP's default: gather and reduce in the weights' dtype
    if gather is not None and own is not None and gather != own:
        # the root casts what comes in (videos, embeddings) to ``gather`` and what goes out back to the weights'
        # dtype; a block takes its inputs as they come (its caller's KV-cache dict must not be copied)
        at_root = MixedPrecisionPolicy(param_dtype=gather, reduce_dtype=own, output_dtype=own)
        in_block = MixedPrecisionPolicy(param_dtype=gather, reduce_dtype=own, cast_forward_inputs=False)
    blocks = units(module)
    inner = {id(p) for b in blocks for p in b.parameters()}
    rest = [p for p in module.parameters() if id(p) not in inner]
    # the divide factors are read off the weights before fully_shard replaces them
    plan = [(b, _divide_factor(list(b.parameters()), world)) for b in blocks]
    plan.append((module, _divide_factor(rest, world)))
    for unit, factor in plan:
        root = unit is module  # a root keeps its weights gathered after forward unless told
        fully_shard(unit, mp_policy=at_root if root else in_block, **({"reshard_after_forward": True} if root else {}))
        if factor is not None:
            unit.set_gradient_divide_factor(factor)
            unit.set_force_sum_reduction_for_comms(True)  # a sum, then the division (gloo has no pre-scaled sum)
    for name in getattr(module, "SHARD_METHODS", FORWARD_METHODS):
        if hasattr(module, name):
            register_fsdp_forward_method(module, name)
    return module


def shard_frozen(dit: nn.Module) -> nn.Module:
    """Shard a frozen DiT (the teacher) block by block: :func:`shard`."""
    return shard(dit)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s weights are sharded (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def local_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s weights this process holds (its shards, for a sharded module)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
