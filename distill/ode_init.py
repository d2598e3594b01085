"""ODE initialisation: regress the streaming student onto teacher ODE trajectories.

Pairs are made by sampling the teacher (Euler with CFG) on a grid that contains
the student's few noise levels, recording the state at each of them, together
with the teacher's final clean output. The student then learns, chunk by chunk
against a cache holding the teacher's clean earlier chunks (the condition it
meets when streaming), to map the state at a random one of its levels to the
final output.

Departure from CausVid/Self-Forcing: the pair set is small and generated at the
start of the run (and stored in the run folder, so resuming does not redo it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genrl import schedulers as fm
from genrl.config import check
from genrl.methods.common import GeneratorState, OptimConfig, StudentOutputs, adamw
from genrl.errors import UsageError
from genrl.models.video_model import FlowVideoModel
from genrl.progress import track
from genrl.registry import METHODS
from genrl.train.ema import EMA
from genrl.train.trainer import Method, Role, StepContext


@dataclass
class ODEInitConfig:
    """ODE-init settings."""

    num_pairs: int = check(512, ">=1")
    """Teacher trajectories generated at the start of the run."""
    teacher_steps: int = check(30, ">=1")
    """Teacher Euler steps per trajectory (the student's levels are added to the grid)."""
    guidance: float = check(4.0, "[0, 50]")
    """Teacher CFG scale."""
    batch_size: int = check(16, ">=1")
    """Trajectories per micro-batch."""
    ema_decay: float = check(0.99, "[0, 1]")
    """Student EMA decay (the EMA is exported)."""
    num_samples: int = check(8, ">=1")
    """Clips in each sample grid."""
    stage_steps: int = check(300, ">=0")
    """Optimiser steps when ODE init runs as the first stage of a DMD / Stream-R1 recipe."""
    stage_lr: float = check(1.0e-4, ">0")
    """Learning rate of that first stage."""
    real_weight: float = check(0.0, ">=0")
    """Weight of a flow-matching loss on real clips, chunk by chunk with the clean earlier chunks
    in the cache (teacher forcing). The teacher's weights know nothing of causal generation, and
    ODE pairs alone taught it motion slowly: a chunk's teacher target depends on noise the student
    never sees, so early on the regression averages motion away. Real clips show it directly."""
    coupled_weight: float = check(0.0, ">=0")
    """Weight of a first-chunk regression loss on *coupled* pairs, whose later chunks' noise is a fixed
    orthogonal rotation of the first chunk's (:func:`coupled_noise`), so the teacher's first chunk is a function
    of the noise the student sees there. On independent noise most of it is decided by the later chunks' noise
    (`genrl eval --task causal`) and the regression learns their blurry mean."""


@torch.no_grad()
def teacher_trajectories(teacher: FlowVideoModel, prompts: list[str], noise: torch.Tensor, levels: list[float], steps: int, guidance: float):
    """Teacher Euler-CFG sampling through a grid containing ``levels``.

    Returns states (B, len(levels), F, C, h, w) at each level and the final output (B, F, C, h, w).
    """
    grid = sorted(set(fm.sampling_sigmas(steps, teacher.cfg.shift).tolist()) | set(levels), reverse=True)
    text = teacher.encode_text(prompts)
    null = teacher.encode_text([""] * len(prompts))
    x, states = noise.clone(), {}
    for s, s_next in zip(grid[:-1], grid[1:]):
        if s in levels:
            states[s] = x.clone()
        v = teacher.velocity(x, torch.full((x.shape[0],), s, device=x.device), text, null, guidance)
        x = fm.euler_step(x, v, s, s_next)
    return torch.stack([states[s] for s in levels], dim=1), x


def coupled_noise(first: torch.Tensor, frames: int, chunk: int, seed: int) -> torch.Tensor:
    """Noise for ``frames`` latent frames whose later chunks are fixed orthogonal rotations of ``first``
    (B, chunk, C, h, w), one rotation per chunk drawn from ``seed``: each chunk is still standard normal, and the
    whole is a function of the first chunk's noise."""
    g = torch.Generator().manual_seed(seed)
    flat, parts = first.flatten(1), [first]
    for start in range(chunk, frames, chunk):
        q, r = torch.linalg.qr(torch.randn(flat.shape[1], flat.shape[1], generator=g))
        rot = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
        n = min(chunk, frames - start)
        parts.append((flat @ rot.T).view_as(first)[:, :n])
    return torch.cat(parts, dim=1)


def ode_pairs(path: Path, teacher: FlowVideoModel, student: FlowVideoModel, world, cfg: ODEInitConfig, seed: int,
              quiet: bool = False, coupled: bool = False) -> dict:
    """The run's teacher ODE pairs: loaded from ``path``, or made (``cfg.num_pairs`` train prompts) and stored there.

    Returns {"prompts", "states" (N, levels, F, C, h, w), "finals" (N, F, C, h, w)}. ``coupled``: the later
    chunks' noise is a rotation of the first chunk's (:func:`coupled_noise`; other prompts and noise).
    """
    if path.exists():
        return torch.load(path)
    g = torch.Generator().manual_seed(seed + 1 + (7_777 if coupled else 0))
    levels, frames = student.streaming_sigmas()[:-1], student.latent_frames(world.cfg.frames)
    prompts = world.random_prompts("train", cfg.num_pairs, g)
    noise = torch.randn(student.latent_shape(len(prompts), frames), generator=g)
    if coupled:
        chunk = student.cfg.dit.chunk_frames
        noise = coupled_noise(noise[:, :chunk], frames, chunk, seed + 4_242)
    states, finals = [], []
    batches = range(0, len(prompts), 32)
    for lo in track(batches, len(batches), "teacher ODE pairs" + (" (coupled)" if coupled else ""), quiet):
        s, f = teacher_trajectories(teacher, prompts[lo : lo + 32], noise[lo : lo + 32].to(teacher.device),
                                    levels, cfg.teacher_steps, cfg.guidance)
        states.append(s.cpu())
        finals.append(f.cpu())
    pairs = {"prompts": prompts, "states": torch.cat(states), "finals": torch.cat(finals)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # every process of a launch makes the same pairs
    torch.save(pairs, tmp)
    tmp.replace(path)
    return pairs


def ode_regression_loss(student: FlowVideoModel, teacher: FlowVideoModel, pairs: dict, levels: list[float],
                        batch_size: int, g: torch.Generator) -> torch.Tensor:
    """MSE of the student's streaming x0-prediction from a teacher ODE state onto the teacher's final output.

    Chunk by chunk, each at a random one of the student's levels, against a cache of the teacher's clean
    earlier chunks (the condition streaming meets; the last chunk is not cached: nothing reads it).
    """
    idx = torch.randint(len(pairs["prompts"]), (batch_size,), generator=g)
    prompts = [pairs["prompts"][i] for i in idx.tolist()]
    dev = student.device
    states, target = pairs["states"][idx].to(dev), pairs["finals"][idx].to(dev)
    with torch.no_grad():
        text = teacher.encode_text(prompts)
    cache, chunk, losses = student.new_cache(), student.cfg.dit.chunk_frames, []
    for start in range(0, target.shape[1], chunk):
        k = int(torch.randint(len(levels), (1,), generator=g))
        pred = student.predict_x0_streaming(states[:, k, start : start + chunk], levels[k], text, cache)
        losses.append(F.mse_loss(pred, target[:, start : start + chunk]))
        if start + chunk < target.shape[1]:
            student.write_cache(target[:, start : start + chunk], text, cache, g)
    return torch.stack(losses).mean()


def first_chunks(pairs: dict, frames: int) -> dict:
    """``pairs`` cut to their first ``frames`` latent frames (views, no copy)."""
    return {"prompts": pairs["prompts"], "states": pairs["states"][:, :, :frames], "finals": pairs["finals"][:, :frames]}


class ODEInitMethod(StudentOutputs, Method):
    name = "ode_init"

    def __init__(self, cfg: ODEInitConfig, student: FlowVideoModel, teacher: FlowVideoModel, world,
                 optim: OptimConfig, seed: int, run_dir: Path, quiet: bool = False):
        self.cfg, self.world = cfg, world
        self.student, self.teacher = student, teacher.requires_grad_(False).eval()
        self.student.requires_grad_(False)
        self.student.dit.requires_grad_(True)
        self.opt, self.sched = adamw(self.student.dit.parameters(), optim)
        self.ema = EMA(self.student, cfg.ema_decay)
        self.data = GeneratorState(seed)
        self.frames = student.latent_frames(world.cfg.frames)
        self.levels = student.streaming_sigmas()[:-1]
        self.pairs = ode_pairs(run_dir / "ode_pairs.pt", teacher, student, world, cfg, seed, quiet)
        self.coupled = (first_chunks(ode_pairs(run_dir / "ode_pairs_coupled.pt", teacher, student, world, cfg, seed,
                                               quiet, coupled=True), student.cfg.dit.chunk_frames)
                        if cfg.coupled_weight else None)  # only their first chunk is regressed

    def regression_loss(self) -> torch.Tensor:
        return ode_regression_loss(self.student, self.teacher, self.pairs, self.levels, self.cfg.batch_size,
                                   self.data.generator)

    def teacher_forcing_loss(self) -> torch.Tensor:
        """Velocity loss on real clips: each chunk noised to its own level, the clean earlier chunks cached."""
        g = self.data.generator
        if not hasattr(self.world, "random_clips"):
            raise UsageError("ode.real_weight needs real clips: the shapes world has them, a prompt file does not")
        video, prompts, _ = self.world.random_clips("train", self.cfg.batch_size, g)
        video = video.to(self.student.device)
        with torch.no_grad():
            x0, text = self.student.encode(video), self.teacher.encode_text(prompts)
        cache, chunk, losses = self.student.new_cache(), self.student.cfg.dit.chunk_frames, []
        for start in range(0, self.frames, chunk):
            clean = x0[:, start : start + chunk]
            sigma = fm.sample_training_sigma(clean.shape[0], self.student.cfg.shift, g).to(clean.device)
            eps = torch.randn(clean.shape, generator=g).to(clean.device)
            v = self.student.velocity(fm.add_noise(clean, eps, sigma), sigma, text, cache=cache)
            losses.append(F.mse_loss(v, fm.velocity_target(clean, eps)))
            if start + chunk < self.frames:  # the last chunk is not cached: nothing reads it
                self.student.write_cache(clean, text, cache, g)
        return torch.stack(losses).mean()

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        metrics: dict[str, float] = {}

        def loss(_: int) -> torch.Tensor:
            total = ode = self.regression_loss()
            metrics["ode_loss"] = float(ode.detach())
            if self.cfg.real_weight:
                real = self.teacher_forcing_loss()
                metrics["real_loss"] = float(real.detach())
                total = total + self.cfg.real_weight * real
            if self.coupled is not None:
                first = ode_regression_loss(self.student, self.teacher, self.coupled, self.levels, self.cfg.batch_size,
                                            self.data.generator)
                metrics["coupled_loss"] = float(first.detach())
                total = total + self.cfg.coupled_weight * first
            return total

        out = ctx.optimize(self.opt, self.student.dit.parameters(), loss, self.sched)
        self.ema.update(self.student)
        return {**out, **metrics}

    def sequence_parallel_models(self):
        """The student's regression passes split each chunk's frames over the group (a head-sharded KV cache);
        the teacher only made the pairs, before training."""
        return [self.student.dit]

    def roles(self):
        return {"student": Role(self.student, trainable=True), "teacher": Role(self.teacher),
                "ema": Role(self.ema.module, cast=False)}

    def checkpoint_modules(self):
        return {"student": self.student, "ema": self.ema.module}

    def stateful(self):
        return {"optimizer": self.opt, "scheduler": self.sched, "data": self.data}


@METHODS.register("ode_init")
def build(cfg, student, teacher, critic, world, quiet: bool = False) -> ODEInitMethod:
    """ODE init from a distill recipe config and its built roles (a critic is not used)."""
    return ODEInitMethod(cfg.ode, student, teacher, world, cfg.optim, cfg.train.seed, Path(cfg.out_dir), quiet)
