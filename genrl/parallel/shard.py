"""Sharding frozen models over the processes of a launch (PyTorch FSDP2's ``fully_shard``).

A frozen DiT (the teacher) is read, never trained, yet every data-parallel process holds all of it: a
14B Wan2.1 teacher is 26.6 GiB in bf16 on each GPU. Sharded block by block, each process keeps 1/N of its
weights and gathers one block at a time while the DiT runs (and frees it again after), so its outputs
are exactly those of the whole model.
"""

from __future__ import annotations

from torch import nn

FORWARD_METHODS = ("forward_frames", "run")
"""Methods other than ``forward`` that run the DiT's weights: they gather like ``forward`` does."""


def shard_frozen(dit: nn.Module) -> nn.Module:
    """Shard ``dit`` in place over the default process group: every block of each ``blocks`` list is a unit
    of its own, the remaining weights (embeddings, final layer) one more, and each unit is gathered for its
    forward and freed after it. Returns ``dit``."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for module in list(dit.modules()):
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                fully_shard(block)
    fully_shard(dit, reshard_after_forward=True)  # a root keeps its weights gathered after forward unless told
    for name in FORWARD_METHODS:
        if hasattr(dit, name):
            register_fsdp_forward_method(dit, name)
    return dit


def local_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s weights this process holds (its shards, for a sharded module)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
