"""What a training pass keeps for backward, counted by autograd's own saved-tensor hooks.

Every tensor an op saves for its backward passes through ``torch.autograd.graph.saved_tensors_hooks``;
counting each storage once (views of one tensor are one allocation) gives the activation memory of a
pass exactly, on any device, without a memory profiler. :func:`tally` also says where each storage was
saved: inside which transformer block and which call of it, or outside every block; and it tells
autocast's low-precision copies of trainable weights (kept for the whole autocast region) from
activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors ``fn`` saves for backward (its activation memory), counted by autograd's hooks.

    Each storage counts once, whole: views of one tensor saved by several ops (a key prefix per query
    block) are one allocation."""
    return tally(fn, []).total


@dataclass
class Tally:
    """Bytes one pass saved for backward, by where they were saved. Parameters themselves are not counted
    (a model's weights are its role's memory, not the pass's)."""

    outside: int = 0
    """Activations saved outside every block (embeddings, output head, the loss)."""
    blocks: dict[int, int] = field(default_factory=dict)
    """Activations saved inside each block, over all its calls."""
    calls: dict[int, list[int]] = field(default_factory=dict)
    """Activations saved by each call of each block (a streamed pass calls every block once a chunk)."""
    inputs: dict[int, int] = field(default_factory=dict)
    """The hidden states each block was called on with gradients, over those calls: what activation
    checkpointing keeps of it."""
    @property
    def total(self) -> int:
        return self.outside + sum(self.blocks.values()) + self.casts

    casts: int = 0
    """Autocast's low-precision copies of trainable weights, made once per autocast region (all of them)."""
    block_casts: dict[int, int] = field(default_factory=dict)
    """Those of them made inside each block (of its own weights)."""


def _is_weight_cast(t: torch.Tensor) -> bool:
    """A copy of a leaf parameter in another dtype (autocast's cached cast), or a view of one (a matmul saves
    the transposed weight), known by the autograd node that made it."""
    fn = (t._base if t._base is not None else t).grad_fn
    return (fn is not None and fn.name() == "ToCopyBackward0" and len(fn.next_functions) == 1
            and fn.next_functions[0][0] is not None and fn.next_functions[0][0].name() == "torch::autograd::AccumulateGrad")


def tally(fn: Callable[[], object], blocks: Sequence[nn.Module], params: Sequence[torch.Tensor] = ()) -> Tally:
    """Run ``fn`` and count what it saves for backward, attributed to the call of ``blocks`` it was saved in.
    ``fn`` should keep its outputs (as a training pass keeps its graph until backward).

    A block's input is its first positional argument or ``hidden_states``. ``params`` (the model's
    parameters) are skipped: a matmul saves its weight, which is memory the model holds anyway."""
    out = Tally(blocks={i: 0 for i in range(len(blocks))}, calls={i: [] for i in range(len(blocks))},
                inputs={i: 0 for i in range(len(blocks))}, block_casts={i: 0 for i in range(len(blocks))})
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: set[int] = set()
    held = []  # every counted tensor stays alive while counting, so no address is reused
    where: list[int] = []  # the block whose call is running (innermost last)

    def enter(i):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if torch.is_grad_enabled():  # a call without gradients (a KV-cache write) keeps nothing
                out.inputs[i] += x.untyped_storage().nbytes() if isinstance(x, torch.Tensor) else 0
                out.calls[i].append(0)
            where.append(i)
        return hook

    def leave(module, args, kwargs, result):
        where.pop()

    def pack(t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in skip or key in seen:
            return t
        seen.add(key)
        held.append(t)
        if _is_weight_cast(t):
            out.casts += st.nbytes()
            if where:
                out.block_casts[where[-1]] += st.nbytes()
        elif where:
            out.blocks[where[-1]] += st.nbytes()
            out.calls[where[-1]][-1] += st.nbytes()
        else:
            out.outside += st.nbytes()
        return t

    handles = [b.register_forward_pre_hook(enter(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(leave, with_kwargs=True) for b in blocks]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        for h in handles:
            h.remove()
    return out
