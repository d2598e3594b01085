"""Trainer = Method x Models x Config: the one loop every training command runs.

A :class:`Method` owns its role models, optimisers and maths; it implements
``train_step(step, ctx)`` and lists what to checkpoint. The trainer owns the
run folder, Accelerate, gradient accumulation, clipping, logging
(``metrics.jsonl`` + optional trackers), periodic samples, progress, Ctrl-C and
checkpoint/resume (models, optimisers, schedulers, RNG, step, method state).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import check, save_config
from ..errors import UsageError
from ..parallel.sequence import every_rank
from ..progress import progress_bar
from .checkpoint import load_checkpoint, resumable_checkpoint, save_checkpoint


@dataclass
class TrainConfig:
    """Loop settings shared by every training command."""

    steps: int = check(1000, ">=0")
    """Optimiser steps to train for (in total, counting resumed ones)."""
    grad_accum: int = check(1, ">=1")
    """Micro-batches accumulated per optimiser step (`grpo`: the step's prompts, with their groups, split into
    this many forward/backward passes; the same gradient, a fraction of the activations)."""
    grad_clip: float = check(1.0, ">=0")
    """Max gradient norm (0 = no clipping)."""
    log_every: int = check(10, ">=1")
    """Steps between metric lines in metrics.jsonl."""
    checkpoint_every: int = check(500, ">=1")
    """Steps between checkpoints (one is always written at the end and on Ctrl-C)."""
    sample_every: int = check(0, ">=0")
    """Steps between sample videos written to the run folder (0 = only at the end)."""
    val_every: int = check(0, ">=0")
    """Steps between validations on held-out data (the val split; also at the last step), logged as val_* in
    metrics.jsonl. The best model so far is exported to {run}/best/ with best.json (its step and figure), so
    a run that degrades late keeps its best point, chosen on val and never on test. 0 = none. Methods that
    validate: the distill methods (prompt accuracy of the EMA student, probe-read)."""
    val_num: int = check(128, ">=1")
    """Held-out items (prompts) each validation measures."""
    keep_checkpoints: int = check(2, ">=1")
    """How many checkpoints to keep."""
    seed: int = 0
    """Seed of every random stream of the run."""
    resume: bool = True
    """Continue from the run folder's latest checkpoint when there is one."""
    max_bad_steps: int = check(3, ">=1")
    """Consecutive steps with a non-finite loss or gradient (each skipped) before the run stops with exit code 1."""
    tracker: str = check("none", "one of: none, tensorboard, wandb")
    """Also log to 'tensorboard' or 'wandb' through Accelerate (when installed), or 'none'."""
    frozen_dtype: str = "auto"
    """dtype of frozen roles (teacher, reward, reference): 'auto' (bfloat16 on a GPU, float32 on CPU),
    'float32', 'bfloat16' or 'float16'. Trainable roles keep float32 weights (autocast comes from
    `accelerate launch --mixed_precision`)."""
    activation_checkpointing: bool = False
    """Recompute activations of trainable roles in backward (models that support it: Wan2.1 transformers,
    transformers Qwen2-VL / Qwen2.5-VL policies), and of frozen ones whose passes keep a graph (VideoReward's
    saliency pass in Stream-R1)."""
    offload_frozen: bool = False
    """Keep frozen roles in CPU memory and stream their layers to the GPU as they run (accelerate's cpu_offload)."""
    shard_frozen: bool = False
    """Shard frozen DiTs (the teacher) over the processes of the launch, block by block (FSDP2's fully_shard):
    each process keeps 1/N of their weights and gathers one block at a time as it runs; outputs are unchanged.
    Every process must run them equally often, as genrl's methods do (samples and validation use the EMA
    student). A frozen policy (GRPO's reference) is sharded layer by layer the same way. Does nothing in one
    process."""
    shard_trained: bool = False
    """Shard the trained policy over the processes of the launch, layer by layer (FSDP2's fully_shard): each
    process keeps 1/N of its weights, gradients and AdamW state, and gathers one layer at a time as it runs;
    gradients are reduce-scattered instead of all-reduced. The same updates as an unsharded run (to float
    rounding). Checkpoints and the exported model hold the whole weights; evaluations run on every process.
    Methods: sft, grpo, t_grpo, tw_grpo, thinker (and reg_grpo without augmentation); composes with
    parallel.sequence. Pair with shard_frozen for the reference. Does nothing in one process."""
    shard_gather: str = check("auto", "one of: auto, weights")
    """The dtype a sharded trained policy is gathered and run in: 'auto', bfloat16 under `accelerate launch
    --mixed_precision bf16` (half the weights held whole and half the traffic; the shards, the gradients' sums
    and AdamW stay float32) and the weights' own dtype otherwise; 'weights', always the weights' own dtype."""


@dataclass
class ParallelConfig:
    """How the processes of a launch split the work (data parallel across the rest)."""

    sequence: int = check(1, ">=1")
    """Sequence-parallel group size: each video's frames are split over this many processes (Ulysses
    all-to-all attention); it must divide the process count. 1 = off."""


class StepContext:
    """What a method's train_step gets: accumulation, backward and clipping done one way.

    A non-finite loss or gradient (on any process) skips the optimiser step: gradients are
    dropped, the optimiser, its schedule and the weights stay as they were, and the skip is
    counted (``skipped_steps``, ``bad_steps_in_a_row``).
    """

    def __init__(self, accelerator, cfg: TrainConfig):
        self.accelerator, self.cfg = accelerator, cfg
        self.skipped_steps = 0
        self.bad_steps_in_a_row = 0
        self.step_was_bad = False

    def optimize(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], micro_loss: Callable[[int], torch.Tensor], scheduler=None,
                 parts: int | None = None, unclipped: Iterable[nn.Parameter] = ()) -> dict[str, float]:
        """Run ``grad_accum`` micro-batches of ``micro_loss(i)`` (their mean is the loss), clip, step, zero.
        With ``parts``, run that many and sum them: each is its share of one batch the method has split.
        ``unclipped``: more parameters the optimizer steps, whose gradients are averaged over the processes
        but left out of the gradient norm and the clipping. Returns loss and grad norm."""
        params = [p for p in params if p.requires_grad]
        unclipped = [p for p in unclipped if p.requires_grad]
        total = 0.0
        n = parts or self.cfg.grad_accum
        for i in range(n):
            loss = micro_loss(i) if parts else micro_loss(i) / n
            self.accelerator.backward(loss)
            total += float(loss.detach())
        sharded = [p for p in params if _is_dtensor(p)]  # train.shard_trained: FSDP reduce-scattered (averaged) these
        if self.accelerator.num_processes > 1:
            whole = [p for p in params + unclipped if not _is_dtensor(p)]
            total = average_gradients(whole, total, whole[0].device if whole else self.accelerator.device)
        gn = grad_norm(params)
        if not self._finite(total, gn):
            optimizer.zero_grad(set_to_none=True)
            self.step_was_bad = True
            return {"loss": total, "grad_norm": float(gn), "skipped": 1.0}
        if self.cfg.grad_clip > 0 and sharded:
            clip_gradients(params, self.cfg.grad_clip, gn)
        elif self.cfg.grad_clip > 0:
            gn = self.accelerator.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": total, "grad_norm": float(gn)}

    def _finite(self, loss: float, grad_norm: torch.Tensor) -> bool:
        """Whether loss and gradients are finite on every process (all skip together, or none)."""
        ok = torch.tensor([float(math.isfinite(loss) and bool(torch.isfinite(grad_norm)))])
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())


def average_gradients(params: list[nn.Parameter], loss: float, device: torch.device) -> float:
    """Data parallelism without wrappers: average gradients (and the loss, on ``device``, the parameters') over
    the processes; returns the mean loss. Methods call their models several times per backward (rollouts, chunks), which DDP's reducer
    does not allow; an explicit all-reduce before the step does."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss], device=device)])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()  # sequence-parallel models end backward with whole gradients: the replicas' mean
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return float(flat[-1])


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The L2 norm of every gradient of ``params``: sharded ones (DTensors) contribute their shards' squares,
    summed over the processes."""
    whole = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
    shards = [p.grad.to_local() for p in params if p.grad is not None and _is_dtensor(p.grad)]
    if not shards:
        return torch.sqrt(sum((g.detach().float() ** 2).sum() for g in whole))
    import torch.distributed as dist

    square = sum((g.detach().float() ** 2).sum() for g in shards)
    dist.all_reduce(square)
    return torch.sqrt(square + sum((g.detach().float() ** 2).sum().to(square.device) for g in whole))


def clip_gradients(params: list[nn.Parameter], max_norm: float, norm: torch.Tensor) -> None:
    """Scale every gradient by max_norm / (norm + 1e-6) when that is below 1 (torch's clip_grad_norm_, for
    gradients some of which are sharded)."""
    coef = float((max_norm / (norm + 1e-6)).clamp(max=1.0))
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef)


@dataclass
class Role:
    """A model a method holds, and how the trainer may place it."""

    module: nn.Module
    trainable: bool = False
    """Updated by an optimiser: float32 weights, activation checkpointing applies."""
    cast: bool = True
    """A frozen role that may run in ``frozen_dtype`` and be offloaded (False for an EMA, which is exported)."""
    graph: bool = False
    """A frozen role whose passes keep a graph for backward (gradients to its inputs: Stream-R1's reward
    saliency): ``train.activation_checkpointing`` applies to it too, when it supports it."""


class Method:
    """Base of every training method. Subclasses fill in the hooks."""

    name = "method"

    def roles(self) -> dict[str, Role]:
        """Every model the method runs. Default: the checkpointed modules, all trainable."""
        return {n: Role(m, trainable=True) for n, m in self.checkpoint_modules().items()}

    def prepare(self, accelerator, sequence: int = 1) -> None:
        """Called once the accelerator exists and the roles are placed: give each data-parallel
        replica its own data stream (models start identical: same seed); the processes of one
        sequence-parallel group share theirs."""
        data = self.stateful().get("data")
        replica = accelerator.process_index // sequence
        if data is not None and replica:
            data.generator.manual_seed(int(data.generator.initial_seed()) + 1_000_003 * replica)

    def shard_trained_refusal(self) -> str | None:
        """Why ``train.shard_trained`` cannot shard this method's trained roles (None: it can). A sharded model
        gathers its weights from every process at each pass, so every process must run it equally often."""
        return f"the {self.name} method does not support it yet"

    def sequence_parallel_models(self) -> list[nn.Module]:
        """The DiTs ``parallel.sequence`` splits over processes (none: the method does not support it)."""
        return []

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        raise NotImplementedError

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights go into checkpoints (trainable ones and EMAs)."""
        raise NotImplementedError

    def stateful(self) -> dict[str, Any]:
        """Objects with state_dict/load_state_dict (optimisers, schedulers) to checkpoint."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Plain method state (e.g. data generator state) to checkpoint."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        """Write sample videos for ``step`` into ``folder``; may return metrics."""
        return {}

    val_key: str | None = None
    """The :meth:`validate` figure the best model is chosen by (higher is better); None: no validation."""

    def validate(self, num: int) -> dict[str, float]:
        """Measure the model :meth:`export` writes on ``num`` held-out items; the dict holds ``val_key``."""
        raise NotImplementedError

    def export(self, run_dir: Path) -> Path | None:
        """Write the final model weights (safetensors) into ``run_dir``. A method that shards its trained roles
        also takes ``weights``: the whole state dicts of :meth:`checkpoint_modules`, gathered by the trainer."""
        return None


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def frozen_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype frozen roles run in; None keeps each role's own ('auto' off a GPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name not in _DTYPES:
        raise UsageError(f"train.frozen_dtype is {name!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def gather_dtype(cfg: TrainConfig, mixed_precision: str) -> torch.dtype | None:
    """The dtype sharded trained roles are gathered and run in (``cfg.shard_gather``) under the launch's
    ``--mixed_precision`` ('no', 'bf16', 'fp16'): bfloat16 under bf16 for 'auto'; else None, their own (float16 gathers
    are not offered)."""
    return torch.bfloat16 if cfg.shard_gather == "auto" and mixed_precision == "bf16" else None


def place_roles(roles: dict[str, Role], device: torch.device, cfg: TrainConfig,
                processes: int = 1, gather: torch.dtype | None = None) -> dict[str, tuple[int, int]]:
    """The one place models meet the device: move every role, cast and offload or shard frozen ones,
    checkpoint activations of trainable ones and shard them (gathered in ``gather``, None: their own dtype; see
    :func:`gather_dtype`). Methods never move models themselves. Returns, for each sharded role, the bytes of
    its (DiT's) weights this process holds and those of the whole."""
    from ..parallel import local_bytes, shard

    if cfg.shard_frozen and cfg.offload_frozen:
        raise UsageError("train.shard_frozen and train.offload_frozen both place the frozen roles; valid: one of them")
    dtype = frozen_dtype(cfg.frozen_dtype, device)
    if cfg.activation_checkpointing:  # every trainable network that can (a small head beside one need not)
        nets = {n: getattr(r.module, "dit", r.module) for n, r in roles.items() if r.trainable}
        able = [net for net in nets.values() if hasattr(net, "enable_activation_checkpointing")]
        if not able:
            names = ", ".join(f"the {n} ({type(net).__name__})" for n, net in nets.items())
            raise UsageError(f"train.activation_checkpointing: no trainable role supports it ({names}); it applies "
                             f"to Wan2.1 transformers and transformers Qwen2-VL / Qwen2.5-VL policies")
        for net in able:
            net.enable_activation_checkpointing()
        for role in roles.values():  # frozen roles that keep a graph
            if role.graph and not role.trainable and hasattr(role.module, "enable_activation_checkpointing"):
                role.module.enable_activation_checkpointing()
    if cfg.shard_trained and processes > 1:  # every trained policy (a small head beside one stays whole)
        trained = {n: r.module for n, r in roles.items() if r.trainable}
        if not any(hasattr(m, "SHARD_METHODS") for m in trained.values()):
            names = ", ".join(f"the {n} ({type(m).__name__})" for n, m in trained.items())
            raise UsageError(f"train.shard_trained shards trained policies (genrl VLMs, transformers Qwen2-VL / "
                             f"Qwen2.5-VL), and no trainable role is one ({names}); valid: false")
    sharded: dict[str, tuple[int, int]] = {}
    for name, role in roles.items():
        m = role.module
        if role.trainable:
            m.to(device)
            if cfg.shard_trained and processes > 1 and hasattr(m, "SHARD_METHODS"):
                whole = local_bytes(m)
                sharded[name] = (local_bytes(shard(m, gather)), whole)
            continue
        m.to(device, dtype) if role.cast and dtype is not None else m.to(device)
        if role.cast and cfg.offload_frozen and device.type == "cuda":
            from accelerate import cpu_offload

            cpu_offload(m, execution_device=device)
        target = m.dit if hasattr(m, "dit") else m if hasattr(m, "SHARD_METHODS") else None  # a DiT, a policy
        if role.cast and cfg.shard_frozen and processes > 1 and target is not None:
            whole = local_bytes(target)
            sharded[name] = (local_bytes(shard(target)), whole)
    return sharded


def _rebind_optimizers(stateful: dict[str, Any], modules: dict[str, nn.Module],
                       names: dict[str, dict[int, str]]) -> dict[str, nn.Module]:
    """Point every optimizer at the sharded parameters (FSDP replaces each parameter of a module it shards by
    a DTensor of the same name; optimizers are built before, on the originals, with no state yet). ``names``:
    each trained module's parameter names by the id of the original. Returns the module each optimizer
    updates: its one trained role, or a ModuleDict of its roles by name (whose state dicts name them so)."""
    owners: dict[str, nn.Module] = {}
    for key, opt in stateful.items():
        if not isinstance(opt, torch.optim.Optimizer):
            continue
        found = set()
        for group in opt.param_groups:
            new = []
            for p in group["params"]:
                owner = next((n for n, ids in names.items() if id(p) in ids), None)
                if owner is None:
                    raise RuntimeError(f"train.shard_trained: optimizer {key!r} updates a parameter outside the "
                                       "trained roles")
                found.add(owner)
                new.append(modules[owner].get_parameter(names[owner][id(p)]))
            group["params"] = new
        if opt.state:
            raise RuntimeError(f"train.shard_trained: optimizer {key!r} must have no state yet")
        owners[key] = modules[found.pop()] if len(found) == 1 else nn.ModuleDict({n: modules[n] for n in sorted(found)})
    return owners


def whole_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict; a sharded module's whole one, gathered to the CPU of the main process (every
    process must call it then; the others get an empty dict)."""
    from ..parallel import is_sharded

    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_whole_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict into ``module``, sharded or not (each process copies in its own shards)."""
    from ..parallel import is_sharded

    if not is_sharded(module):
        module.load_state_dict(state)
        return
    _keep_shards(state, module.state_dict(), type(module).__name__)


def load_whole_optimizer_state(module: nn.Module, optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer's whole state dict, by parameter name (as :meth:`Trainer.save` writes a sharded role's),
    into ``optimizer`` over the sharded ``module``: each process copies in its own shards of the moments."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    _init_optim_state(optimizer)  # a fresh optimizer's state tensors, made as its first step makes them (zero)
    trained = {name: p for name, p in module.named_parameters() if p in optimizer.state}
    for name in [n for n in trained if n not in state["state"]]:  # no gradient yet when saved: no state, as then
        optimizer.state.pop(trained.pop(name))
    whole = {f"{name}.{key}": v for name, values in state["state"].items() for key, v in values.items()}
    mine = {f"{name}.{key}": v for name, p in trained.items() for key, v in optimizer.state[p].items()}
    _keep_shards(whole, mine, "the optimizer")
    if len(state["param_groups"]) != len(optimizer.param_groups):
        raise RuntimeError(f"loading the optimizer: {len(state['param_groups'])} parameter groups saved, "
                           f"{len(optimizer.param_groups)} now")
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):  # learning rate, betas, ...
        group.update({k: v for k, v in saved.items() if k != "params"})


def _keep_shards(whole: dict[str, Any], local: dict[str, Any], what: str) -> None:
    """Copy into each tensor of ``local`` its own part of the tensor of the same name in ``whole``: a sharded one
    (DTensor) its shard, sliced out of the whole before anything is read, so a whole tensor mapped from a file
    (:func:`~genrl.train.checkpoint.mapped_safetensors`) is read only where this process's shard lies; any other
    the whole tensor. No communication."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    missing, unexpected = sorted(local.keys() - whole.keys()), sorted(whole.keys() - local.keys())
    if missing or unexpected:
        raise RuntimeError(f"loading {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, mine in local.items():
            if isinstance(mine, DTensor):
                shape, offset = compute_local_shape_and_global_offset(whole[name].shape, mine.device_mesh, mine.placements)
                mine.to_local().copy_(whole[name][tuple(slice(o, o + n) for n, o in zip(shape, offset))])
            elif isinstance(mine, torch.Tensor):
                mine.copy_(whole[name])


def _size(n: float) -> str:
    """Bytes in the largest unit that keeps a number >= 1 (B, KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


class Trainer:
    def __init__(self, cfg: TrainConfig, method: Method, run_dir: str | Path, full_config: Any = None, quiet: bool = False,
                 parallel: ParallelConfig | None = None):
        from accelerate import Accelerator

        # refusals before the run folder or any process group exists
        if cfg.val_every and method.val_key is None:
            raise UsageError(f"config key 'train.val_every' is {cfg.val_every}, but the {method.name} method has no "
                             "validation; valid: 0 (the distill methods validate)")
        if cfg.shard_trained and (why := method.shard_trained_refusal()):
            raise UsageError(f"train.shard_trained: {why}; valid: false")
        self.cfg, self.method, self.quiet = cfg, method, quiet
        self.run_dir = Path(run_dir)
        log_with = None if cfg.tracker == "none" else cfg.tracker
        # without an accelerator, `accelerate launch`/torchrun processes run as gloo CPU ranks
        self.accelerator = Accelerator(log_with=log_with, project_dir=str(self.run_dir), cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if full_config is not None:
                save_config(full_config, self.run_dir / "config.yaml")
        if log_with:
            self.accelerator.init_trackers(method.name)
        roles = self.method.roles()
        self.shards_trained = cfg.shard_trained and self.accelerator.num_processes > 1
        """Whether the trained roles are sharded (train.shard_trained): their checkpoints, exports and
        evaluations then need every process."""
        self.sequence = (parallel or ParallelConfig()).sequence
        if self.sequence > 1 and self.shards_trained:  # split first: sharding takes over the split's gradient sums
            self._apply_sequence_parallel()
        names = {n: {id(p): k for k, p in r.module.named_parameters()} for n, r in roles.items() if r.trainable}
        gather = gather_dtype(cfg, self.accelerator.mixed_precision) if self.shards_trained else None
        self.sharded = place_roles(roles, self.accelerator.device, cfg, self.accelerator.num_processes, gather)
        """(bytes this process holds, bytes of the whole) of each sharded role's weights (train.shard_frozen: a
        frozen DiT or policy; train.shard_trained: a trained policy)."""
        self.optimized: dict[str, nn.Module] = {}
        """The sharded trained module each optimizer (by its name in the method's stateful) updates."""
        if self.shards_trained:
            self.optimized = _rebind_optimizers(method.stateful(), {n: roles[n].module for n in names}, names)
        if self.sharded and self.is_main and not quiet:
            for key, kinds in (("train.shard_frozen", False), ("train.shard_trained", True)):
                held = [f"{n} {_size(h)} of {_size(w)} per process" for n, (h, w) in self.sharded.items()
                        if roles[n].trainable == kinds]
                if held:
                    how = f", gathered in {str(gather).removeprefix('torch.')}" if kinds and gather else ""
                    print(f"{key}: " + ", ".join(held) + how, file=sys.stderr)
        if self.sequence > 1 and not self.shards_trained:
            self._apply_sequence_parallel()
        self.method.prepare(self.accelerator, self.sequence)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.best: dict[str, Any] | None = None
        """{"step", "key", "value"} of the best validation so far (checkpointed, so a resumed run keeps it)."""

    def _apply_sequence_parallel(self) -> None:
        from ..parallel import make_sequence_parallel, sequence_groups

        models = self.method.sequence_parallel_models()
        if not models:
            raise UsageError(f"parallel.sequence={self.sequence}: the {self.method.name} method does not support "
                             "sequence parallelism yet; valid: 1")
        n = self.accelerator.num_processes
        if n % self.sequence:
            raise UsageError(f"parallel.sequence={self.sequence} must divide the number of processes ({n}); launch "
                             f"with accelerate launch --num_processes {self.sequence} (or a multiple of it)")
        group = sequence_groups(self.sequence)
        for m in models:
            make_sequence_parallel(m, self.sequence, group)

    @property
    def runs_samples(self) -> bool:
        """Whether this process runs the method's samples and evaluations: the main one, or every one when the
        trained roles are sharded (each pass gathers from all)."""
        return self.is_main or self.shards_trained

    def main_value(self, value: Any) -> Any:
        """The main process's ``value``, on every process (every process must call it)."""
        if self.accelerator.num_processes == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -------------------------------------------------------------- checkpoints
    PER_PROCESS = ("data",)
    """Stateful objects each process keeps its own of (its data stream); the rest are identical everywhere."""

    def _own_state(self) -> dict[str, Any]:
        """What differs between processes: data streams, RNG, the method's running state (e.g. reward history)."""
        stateful = self.method.stateful()
        return {"stateful": {n: stateful[n].state_dict() for n in self.PER_PROCESS if n in stateful},
                "method": self.method.extra_state(), "rng": _rng_state()}

    def _whole_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The checkpointed modules' state dicts; sharded ones whole on the main process (every process calls)."""
        return {n: whole_state_dict(self.accelerator.unwrap_model(m)) for n, m in self.method.checkpoint_modules().items()}

    def save(self, step: int) -> dict[str, dict[str, torch.Tensor]]:
        """Checkpoint ``step``; returns the weights written (:meth:`_whole_weights`)."""
        self.accelerator.wait_for_everyone()
        per_process = [self._own_state()]
        if self.accelerator.num_processes > 1:  # every process's own state goes into the one checkpoint
            import torch.distributed as dist

            per_process = [None] * self.accelerator.num_processes
            dist.all_gather_object(per_process, self._own_state())
        weights = self._whole_weights()
        stateful = {n: self._state_of(n, o) for n, o in self.method.stateful().items()}
        if not self.is_main:
            return weights
        from ..models.registry import check_finite, model_metadata

        for n, w in weights.items():
            check_finite(w, f"{self.ckpt_root} ({n}, step {step})")
        state = {
            "step": step,
            "num_processes": self.accelerator.num_processes,
            "shards_trained": self.shards_trained,
            "stateful": stateful,
            "method": self.method.extra_state(),
            "rng": _rng_state(),
            "per_process": per_process,
            "best": self.best,
        }
        modules = {n: self.accelerator.unwrap_model(m) for n, m in self.method.checkpoint_modules().items()}
        save_checkpoint(self.ckpt_root, step, weights, state, keep=self.cfg.keep_checkpoints,
                        metadata={n: model_metadata(m) for n, m in modules.items()})
        return weights

    def _state_of(self, name: str, obj: Any) -> dict[str, Any]:
        """``obj``'s state dict; a sharded role's optimizer's whole one, by parameter name (every process)."""
        if name not in self.optimized:
            return obj.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.optimized[name], obj,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def maybe_resume(self) -> int:
        """Load the newest intact checkpoint (warning about damaged newer ones); cut metrics.jsonl back to it."""
        path, warnings = resumable_checkpoint(self.ckpt_root) if self.cfg.resume else (None, [])
        if self.is_main:
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
        if path is None:
            if self.is_main:
                self._cut_metrics(0)
            return 0
        # resumable_checkpoint just verified every checksum. Sharded, each process reads only its shards of the
        # whole weights and AdamW moments from the files mapped into memory (a 7B float32 policy's are 84 GB)
        step, weights, state = load_checkpoint(path, verify=False, mapped=self.shards_trained)
        saved, now = state.get("num_processes", 1), self.accelerator.num_processes
        if saved != now:
            raise UsageError(f"{path} was written by {saved} process(es) and this run has {now}: each process's data "
                             f"stream and RNG are in the checkpoint, so resume with {saved} (accelerate launch "
                             f"--num_processes {saved}), or start a new out_dir")
        if state.get("shards_trained", False) != self.shards_trained:  # whole vs per-parameter optimizer states
            was = str(state.get("shards_trained", False)).lower()
            raise UsageError(f"{path} was written with train.shard_trained={was} over {saved} process(es): resume "
                             f"with train.shard_trained={was}, or start a new out_dir")
        if self.is_main:
            self._cut_metrics(step)
        for n, m in self.method.checkpoint_modules().items():
            load_whole_state_dict(self.accelerator.unwrap_model(m), weights[n])
        own = state.get("per_process", [None] * now)[self.accelerator.process_index] or {}
        for n, o in self.method.stateful().items():
            saved_state = own.get("stateful", {}).get(n, state["stateful"][n])
            if n in self.optimized:
                load_whole_optimizer_state(self.optimized[n], o, saved_state)
            else:
                o.load_state_dict(saved_state)
        self.method.load_extra_state(own.get("method", state["method"]))
        _set_rng_state(own.get("rng", state["rng"]))
        self.best = state.get("best")
        return step

    def _cut_metrics(self, step: int) -> None:
        """Keep the rows of metrics.jsonl up to ``step`` (the replayed steps are logged again); drop a partial line."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                keep.append(line + "\n")
        if dropped:
            print(f"warning: {path}: dropped {dropped} partial line(s) left by an interrupted write", file=sys.stderr)
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)

    def _count_bad_step(self, ctx: StepContext, step: int, metrics: dict[str, float], seconds: float) -> None:
        """Skip a step whose loss or gradient was non-finite; stop after ``max_bad_steps`` in a row."""
        if not ctx.step_was_bad:
            ctx.bad_steps_in_a_row = 0
            return
        ctx.skipped_steps += 1
        ctx.bad_steps_in_a_row += 1
        metrics["skipped_steps"] = float(ctx.skipped_steps)
        if self.is_main:
            self.log(step, {"skipped_steps": float(ctx.skipped_steps), "nonfinite_step": float(step)}, seconds)
        if ctx.bad_steps_in_a_row >= self.cfg.max_bad_steps:
            from ..errors import TrainingDiverged

            raise TrainingDiverged(
                f"{self.run_dir}: loss or gradients non-finite for {ctx.bad_steps_in_a_row} steps in a row (up to step "
                f"{step}); those steps were skipped and nothing after the last good checkpoint was written — lower "
                f"optim.lr or check the inputs, then re-run to resume")

    def log(self, step: int, metrics: dict[str, float], seconds: float) -> None:
        """Append one row to metrics.jsonl and hand it to the trackers."""
        if not metrics:
            return
        row = {"step": step, "time": round(seconds, 2), **{k: float(v) for k, v in metrics.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self.accelerator.log(metrics, step=step)

    # --------------------------------------------------------------- validation
    def _validate(self, step: int, seconds: float) -> None:
        """Validate, log, and export the model to {run}/best/ when it beats every earlier validation."""
        rng = _rng_state()  # validation draws from its own generators; training's streams must not notice it
        metrics = self.method.validate(self.cfg.val_num)
        _set_rng_state(rng)
        self.log(step, metrics, seconds)
        key = self.method.val_key
        if self.best is not None and metrics[key] <= self.best["value"]:
            return
        self.best = {"step": step, "key": key, "value": float(metrics[key])}
        best, tmp, old = self.run_dir / "best", self.run_dir / ".best.tmp", self.run_dir / ".best.old"
        for d in (tmp, old):
            shutil.rmtree(d, ignore_errors=True)
        self.method.export(tmp)
        (tmp / "best.json").write_text(json.dumps({**self.best, "metrics": metrics}, indent=2) + "\n")
        if best.exists():
            best.rename(old)
        tmp.rename(best)  # a kill between the renames leaves .best.old, the previous best, intact
        shutil.rmtree(old, ignore_errors=True)

    # --------------------------------------------------------------------- loop
    def _autocast(self):
        """The launch's autocast (`--mixed_precision`) around a step. Sharded trained roles turn its weight cache
        off: FSDP gathers each weight into the same tensor every time, and a cast cached in the step's sampling
        pass (under no_grad) was reused by its scoring pass, so the gradients of those weights were lost (a
        2-process GRPO step's gradient norm read 0.354 where the unsharded run's reads 0.849)."""
        from accelerate.utils import AutocastKwargs

        return self.accelerator.autocast(AutocastKwargs(cache_enabled=False) if self.shards_trained else None)

    def fit(self, finish: Callable[[], Any] | None = None) -> dict[str, float]:
        """Train to ``cfg.steps`` (resuming), checkpoint, export, then call ``finish`` on every process (a final
        evaluation: a sharded policy's needs every process, before they leave the process group)."""
        seed_everything(self.cfg.seed)
        start = self.maybe_resume()
        ctx = StepContext(self.accelerator, self.cfg)
        last: dict[str, float] = {}
        step = start
        t0 = time.time()
        if start and self.is_main and not self.quiet:
            print(f"resumed {self.run_dir} at step {start}")
        with _graceful_interrupt() as stop, progress_bar(self.cfg.steps - start, self.method.name, self.quiet or not self.is_main) as advance:
            for step in range(start + 1, self.cfg.steps + 1):
                ctx.step_was_bad = False
                with self._autocast(), every_rank():
                    last = self.method.train_step(step, ctx)
                self._count_bad_step(ctx, step, last, time.time() - t0)
                if self.is_main and (step % self.cfg.log_every == 0 or step == self.cfg.steps):
                    self.log(step, last, time.time() - t0)
                val_due = self.cfg.val_every and (step % self.cfg.val_every == 0 or step == self.cfg.steps)
                if val_due and self.is_main:
                    self._validate(step, time.time() - t0)
                if self.cfg.sample_every and step % self.cfg.sample_every == 0 and step != self.cfg.steps and self.runs_samples:
                    samples = self.method.write_samples(step, self.run_dir / "samples")
                    if self.is_main:
                        self.log(step, samples, time.time() - t0)
                if stop():  # Ctrl-C: finish the step, checkpoint it, leave
                    self.save(step)
                    raise KeyboardInterrupt
                if step % self.cfg.checkpoint_every == 0 and step != self.cfg.steps:
                    self.save(step)
                advance(1, " ".join(f"{k}={v:.4g}" for k, v in list(last.items())[:3]))
        weights = self.save(self.cfg.steps) if step > start else None
        samples = self.method.write_samples(self.cfg.steps, self.run_dir / "samples") if self.runs_samples else {}
        if self.shards_trained and weights is None:  # a finished run re-run: gather the whole weights once
            weights = self._whole_weights()
        if self.is_main:
            self.log(self.cfg.steps, samples, time.time() - t0)
            self.method.export(self.run_dir, weights=weights) if self.shards_trained else self.method.export(self.run_dir)
            from ..report import write_report

            write_report(self.run_dir)
        if finish is not None:
            finish()
        self.accelerator.wait_for_everyone()  # end_training leaves the process group: all together, after the
        self.accelerator.end_training()  # main process's writes (one leaving early could abort at teardown)
        return last


@contextmanager
def _graceful_interrupt():
    """First Ctrl-C asks the loop to stop after the current step; a second one stops at once."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag["stop"]:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag["stop"] = True
        print("\nstopping after this step (Ctrl-C again to abort at once)", flush=True)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield lambda: flag["stop"]
        return
    try:
        yield lambda: flag["stop"]
    finally:
        signal.signal(signal.SIGINT, previous)


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of a run's metrics.jsonl; a line cut short by a kill is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows
