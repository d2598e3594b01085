"""DMD (distribution matching distillation) of a streaming student, as in DMD2 / CausVid / Self-Forcing.

Per generator update: a self-forcing rollout x of the student; one noise level
per sample (uniform, shifted, then clamped to [min_t, max_t]); real score =
frozen teacher x0-prediction guided as cond + w (cond - uncond), fake score = critic x0-prediction; the normalised
gradient g = (x_fake - x_real) / mean|x - x_real| and the loss
0.5 * mean((x - sg(x - g))^2). The critic learns the student's distribution
with the flow-matching loss on no-grad rollouts, at the same noise levels the
DMD step queries it at, ``critic_ratio`` updates per generator update.

Departures from the papers: the student's text encoder is frozen and shared
with the teacher (all three models read the same text features); the loss
takes optional element weights W and per-rollout weights — the one hook
Stream-R1 overrides (beta = 0 and W = 1 give back exactly this loss).

Options from DMD2, off by default: the regression loss on teacher ODE pairs (``regression_weight``) and the GAN
term against real clips (``gan_weight``, distill/gan.py).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genrl import schedulers as fm
from genrl.config import check
from genrl.errors import UsageError
from genrl.registry import METHODS
from genrl.methods.common import GeneratorState, OptimConfig, StudentOutputs, adamw
from genrl.models.video_model import FlowVideoModel
from genrl.train.ema import EMA
from genrl.train.trainer import Method, Role, StepContext

from .gan import FeatureClassifier, block_features, classifier_loss, feature_block, generator_gan_loss, noised
from .ode_init import ode_pairs, ode_regression_loss
from .rollout import self_forcing_rollout


# ------------------------------------------------------------------------ maths
def dmd_gradient(x: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """g = (x_fake - x_real) / mean_{F,C,H,W} |x - x_real|, per sample.

    A sample with x == x_real everywhere (0/0) gets 0; a non-finite teacher or critic score is
    left non-finite so the trainer's guard skips the step instead of training on zeros.
    """
    norm = (x - x_real).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    # only x == x_real (norm 0) maps to 0; a non-finite score stays non-finite, so the trainer skips the step
    return torch.where(norm > 0, (x_fake - x_real) / norm.clamp_min(1e-30), torch.zeros_like(x))


def dmd_loss(x: torch.Tensor, g: torch.Tensor, weights: torch.Tensor | None = None, rollout_weights: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * mean(W * (x - sg(x - g))^2), each rollout scaled by its weight, averaged over rollouts.

    With W = 1 and unit rollout weights this is the plain DMD loss; its gradient w.r.t. x is g * W / numel.
    """
    target = (x - g).detach()
    sq = (x - target) ** 2
    if weights is not None:
        sq = sq * weights
    per_rollout = 0.5 * sq.flatten(1).mean(dim=1)
    if rollout_weights is not None:
        per_rollout = per_rollout * rollout_weights
    return per_rollout.mean()


def sample_dmd_sigma(n: int, shift: float, min_t: float, max_t: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One noise level per sample: timestep uniform in [0, 1000), shifted, then clamped to [min_t, max_t].

    The order is the anchors' (Self-Forcing, Stream-R1): sigma spans [min_t, max_t] / 1000
    whatever the shift; clamping before the shift would move both ends.
    """
    u = torch.rand(n, generator=generator)
    return fm.shift_sigma(u, shift).clamp(min_t / fm.NUM_TRAIN_TIMESTEPS, max_t / fm.NUM_TRAIN_TIMESTEPS)


def guided_x0(x0_cond: torch.Tensor, x0_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Real score with guidance in the anchors' convention: cond + w (cond - uncond).

    w = 3 (the anchors' default) is genrl's ``cfg`` scale 4 (uncond + 4 (cond - uncond)).
    """
    return x0_cond + guidance * (x0_cond - x0_uncond)


# ----------------------------------------------------------------------- method
@dataclass
class DMDConfig:
    """DMD settings."""

    batch_size: int = check(8, ">=1")
    """Rollouts per generator micro-batch (and per critic micro-batch)."""
    critic_ratio: int = check(5, ">=1")
    """Critic updates per generator update."""
    real_guidance: float = check(3.0, "[0, 50]")
    """Guidance w of the teacher's (real score) prediction in the anchors' convention
    cond + w (cond - uncond); w = 3 is genrl's sampling CFG scale 4, w = 0 is no guidance."""
    min_t: float = check(20.0, "[0, 1000]")
    """Smallest DMD timestep."""
    max_t: float = check(980.0, "[0, 1000]")
    """Largest DMD timestep."""
    ema_decay: float = check(0.99, "[0, 1]")
    """Generator EMA decay (the EMA is what is exported)."""
    num_samples: int = check(8, ">=1")
    """Clips in each sample grid."""
    max_rollout_frames: int = check(0, ">=0")
    """Longer-than-window training: each iteration rolls out a random whole number of chunks
    between world.frames and this many frames (rolling the KV cache as in long sampling), and
    the DMD and critic losses see its last world.frames frames. 0 = world.frames."""
    regression_weight: float = check(0.0, ">=0")
    """Weight of DMD's regression loss (Yin et al. 2024, lambda_reg 0.25 there): the ODE-init loss on teacher
    ODE pairs, added to the generator loss. Distribution matching alone is mode-seeking; the pairs tie the
    student to where the teacher's ODE takes each noise. 0 = off."""
    regression_pairs: str = ""
    """ODE pairs for the regression loss: a file made by ODE init ({run}/ode_pairs.pt; it must match the
    student's levels and frames), or empty to make ode.num_pairs of them into this run's folder at the start."""
    gan_weight: float = check(0.0, ">=0")
    """Weight of DMD2's GAN term in the generator loss (non-saturating): a head on the critic's block features
    tells real clips from the student's rollouts (distill/gan.py). Needs real clips (the shapes world).
    0 = off, plain DMD."""
    gan_classifier_weight: float = check(0.01, ">=0")
    """Weight of the classifier loss in the critic's loss (DMD2: 1e-2; the head, which only this loss
    trains, learns at Adam's pace whatever the weight)."""
    gan_head_lr_scale: float = check(1.0, ">0")
    """The classifier head's learning rate relative to critic_optim.lr (1 = DMD2's one rate; a fresh head
    learns little in a few hundred updates at the critic's rate)."""
    gan_block: int = check(-1, ">=-1")
    """Critic block whose output tokens the classifier reads; -1 = the middle one (DMD2 reads the bottleneck)."""


class DMDMethod(StudentOutputs, Method):
    name = "dmd"

    def __init__(self, cfg: DMDConfig, student: FlowVideoModel, teacher: FlowVideoModel, world,
                 optim: OptimConfig, critic_optim: OptimConfig, seed: int, critic: FlowVideoModel | None = None,
                 pairs: dict | None = None):
        self.cfg, self.world = cfg, world
        self.pairs = pairs
        if cfg.regression_weight and pairs is None:
            raise ValueError("dmd.regression_weight > 0 needs the ODE pairs")
        self.student, self.teacher = student, teacher.requires_grad_(False).eval()
        self.critic = (critic if critic is not None else copy.deepcopy(teacher)).requires_grad_(False)
        self.critic.dit.requires_grad_(True)
        self.student.requires_grad_(False)
        self.student.dit.requires_grad_(True)
        self.opt, self.sched = adamw(self.student.dit.parameters(), optim)
        self.ema = EMA(self.student, cfg.ema_decay)
        self.data = GeneratorState(seed)
        self.frames = student.latent_frames(world.cfg.frames)
        self.null = None
        self.gan_head = None
        if cfg.gan_weight:
            if not hasattr(world, "random_clips"):
                raise UsageError("dmd.gan_weight needs real clips: the shapes world has them, a prompt file does not")
            with torch.no_grad():
                text_dim = teacher.encode_text([""])[0].shape[-1]
            self.gan_block = feature_block(self.critic.dit, cfg.gan_block)
            self.gan_head = FeatureClassifier(_token_dim(self.critic.dit), text_dim)
            self.gan_data = GeneratorState(seed + 9_173)  # its own draws: the DMD step's are unchanged
        groups = [{"params": list(self.critic.dit.parameters())}]
        if self.gan_head is not None:
            groups.append({"params": list(self.gan_head.parameters()), "lr": critic_optim.lr * cfg.gan_head_lr_scale})
        self.critic_opt, self.critic_sched = adamw(groups, critic_optim)

    # -- the hook Stream-R1 overrides
    def loss_weights(self, x: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, float]]:
        """Element weights W (like x) and per-rollout weights for the DMD loss; plain DMD: none."""
        return None, None, {}

    # -- pieces
    def _batch(self):
        g = self.data.generator
        prompts = self.world.random_prompts("train", self.cfg.batch_size, g)
        with torch.no_grad():
            text = self.teacher.encode_text(prompts)
            if self.null is None:
                self.null = self.teacher.encode_text([""])
        null = tuple(t.expand(len(prompts), *t.shape[1:]) for t in self.null)
        noise = torch.randn(self.student.latent_shape(len(prompts), self.rollout_frames(g)), generator=g).to(self.student.device)
        exit_step = int(torch.randint(len(self.student.cfg.streaming.timesteps), (1,), generator=g))
        return prompts, text, null, noise, exit_step

    def rollout_frames(self, g: torch.Generator) -> int:
        """Frames to roll out this iteration: world.frames, or a random number of chunks up to max_rollout_frames."""
        chunk = self.student.cfg.dit.chunk_frames
        lo, hi = self.frames // chunk, max(self.frames, self.cfg.max_rollout_frames) // chunk
        return chunk * (lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=g)))

    def window(self, x: torch.Tensor) -> torch.Tensor:
        """The frames the teacher and critic judge: all of a training-length rollout, the last window of a longer one."""
        return x[:, -self.frames :]

    def critic_params(self) -> list[torch.nn.Parameter]:
        """What the critic's optimiser updates: its DiT, and the GAN classifier's head when the term is on."""
        return [*self.critic.dit.parameters(), *(self.gan_head.parameters() if self.gan_head is not None else ())]

    def critic_loss(self, metrics: dict[str, float] | None = None) -> torch.Tensor:
        g = self.data.generator
        _, text, _, noise, exit_step = self._batch()
        with torch.no_grad():
            x0 = self.window(self_forcing_rollout(self.student, text, noise, exit_step, g, grad=False).latents)
        # the critic learns at the noise levels DMD queries it at
        sigma = sample_dmd_sigma(x0.shape[0], self.teacher.cfg.shift, self.cfg.min_t, self.cfg.max_t, g)
        eps = torch.randn(x0.shape, generator=g).to(x0.device)
        sigma = sigma.to(x0.device)
        hook = block_features(self.critic.dit, self.gan_block) if self.gan_head is not None else contextlib.nullcontext()
        with hook as feats:
            v = self.critic.velocity(fm.add_noise(x0, eps, sigma), sigma, text)
            flow = F.mse_loss(v, fm.velocity_target(x0, eps))
            if self.gan_head is None:
                return flow
            d_fake = self.gan_head(feats[-1], text)
            d_real = self._real_logits(x0.shape[0], feats)
        cls = classifier_loss(d_real, d_fake)
        metrics = {} if metrics is None else metrics
        metrics.update(gan_classifier_loss=float(cls.detach()), gan_real_logit=float(d_real.detach().mean()),
                       gan_fake_logit=float(d_fake.detach().mean()), critic_flow_loss=float(flow.detach()))
        return flow + self.cfg.gan_classifier_weight * cls

    def _real_logits(self, n: int, feats: list[torch.Tensor]) -> torch.Tensor:
        """The classifier on ``n`` real clips (their captions), noised at DMD's levels with the GAN's draws."""
        g = self.gan_data.generator
        video, prompts, _ = self.world.random_clips("train", n, g)
        dev = self.student.device
        with torch.no_grad():
            real, text = self.student.encode(video.to(dev)), self.teacher.encode_text(prompts)
        sigma = sample_dmd_sigma(n, self.teacher.cfg.shift, self.cfg.min_t, self.cfg.max_t, g).to(dev)
        self.critic.velocity(noised(real, sigma, g), sigma, text)
        return self.gan_head(feats[-1], text)

    def real_score(self, xt: torch.Tensor, sigma: torch.Tensor, text, null) -> torch.Tensor:
        """The teacher's guided x0-prediction (no gradient is taken through it)."""
        x_c = self.teacher.predict_x0(xt, sigma, text)
        if not self.cfg.real_guidance:
            return x_c
        return guided_x0(x_c, self.teacher.predict_x0(xt, sigma, null), self.cfg.real_guidance)

    def generator_loss(self, metrics: dict[str, float]) -> torch.Tensor:
        g = self.data.generator
        prompts, text, null, noise, exit_step = self._batch()
        x = self.window(self_forcing_rollout(self.student, text, noise, exit_step, g).latents)
        sigma = sample_dmd_sigma(x.shape[0], self.teacher.cfg.shift, self.cfg.min_t, self.cfg.max_t, g).to(x.device)
        xt = fm.add_noise(x.detach(), torch.randn(x.shape, generator=g).to(x.device), sigma)
        with torch.no_grad():
            x_real = self.real_score(xt, sigma, text, null)
            x_fake = self.critic.predict_x0(xt, sigma, text)
        grad = dmd_gradient(x.detach(), x_real, x_fake)
        weights, rollout_weights, extra = self.loss_weights(x, prompts)
        metrics.update(extra)
        metrics["dmd_grad_norm"] = float(grad.flatten(1).norm(dim=1).mean())
        loss = dmd_loss(x, grad, weights, rollout_weights)
        if self.gan_head is not None or self.cfg.regression_weight:
            metrics["dmd_loss"] = float(loss.detach())
        if self.gan_head is not None:
            loss = loss + self.cfg.gan_weight * self._generator_gan(x, text, metrics)
        if self.cfg.regression_weight:
            reg = ode_regression_loss(self.student, self.teacher, self.pairs, self.student.streaming_sigmas()[:-1],
                                      self.cfg.batch_size, g)
            metrics["regression_loss"] = float(reg.detach())
            loss = loss + self.cfg.regression_weight * reg
        return loss

    def _generator_gan(self, x: torch.Tensor, text, metrics: dict[str, float]) -> torch.Tensor:
        """The student's GAN term: its rollout noised (GAN's draws), read by the frozen critic and head."""
        g = self.gan_data.generator
        sigma = sample_dmd_sigma(x.shape[0], self.teacher.cfg.shift, self.cfg.min_t, self.cfg.max_t, g).to(x.device)
        frozen = [p for p in self.critic_params() if p.requires_grad]
        for p in frozen:  # the gradient reaches the student's rollout only
            p.requires_grad_(False)
        try:
            with block_features(self.critic.dit, self.gan_block) as feats:
                self.critic.velocity(noised(x, sigma, g), sigma, text)
                gan = generator_gan_loss(self.gan_head(feats[-1], text))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        metrics["gan_generator_loss"] = float(gan.detach())
        return gan

    # -- Method hooks
    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        metrics: dict[str, float] = {}
        critic = [ctx.optimize(self.critic_opt, self.critic_params(), lambda i: self.critic_loss(metrics), self.critic_sched)
                  for _ in range(self.cfg.critic_ratio)][-1]  # critic_ratio >= 1: the last update's figures
        gen = ctx.optimize(self.opt, self.student.dit.parameters(), lambda i: self.generator_loss(metrics), self.sched)
        self.ema.update(self.student)
        return {"loss": gen["loss"], "grad_norm": gen["grad_norm"], "critic_loss": critic["loss"],
                "critic_grad_norm": critic["grad_norm"], **metrics}

    def sequence_parallel_models(self):
        """Every DiT's frames are split: the bidirectional teacher and critic that judge whole videos, and the
        student, whose rollout splits each chunk's frames over the group and keeps its heads of the KV cache
        (the same seeds on every rank, so the same rollout)."""
        return [self.teacher.dit, self.critic.dit, self.student.dit]

    def roles(self):
        roles = {"student": Role(self.student, trainable=True), "critic": Role(self.critic, trainable=True),
                 "teacher": Role(self.teacher), "ema": Role(self.ema.module, cast=False)}
        if self.gan_head is not None:
            roles["gan_classifier"] = Role(self.gan_head, trainable=True)
        return roles

    def checkpoint_modules(self):
        mods = {"student": self.student, "critic": self.critic, "ema": self.ema.module}
        if self.gan_head is not None:
            mods["gan_classifier"] = self.gan_head
        return mods

    def stateful(self):
        state = {"optimizer": self.opt, "scheduler": self.sched, "critic_optimizer": self.critic_opt,
                 "critic_scheduler": self.critic_sched, "data": self.data}
        if self.gan_head is not None:
            state["gan_data"] = self.gan_data
        return state


def _token_dim(dit) -> int:
    """Width of the critic DiT's block tokens (genrl's DiT; the GAN term needs real clips, which only the shapes
    world provides, so the Wan2.1 recipes that train on prompt files never reach it)."""
    dim = getattr(getattr(dit, "cfg", None), "dim", None)
    if dim is None:
        raise UsageError(f"dmd.gan_weight: cannot tell the token width of a {type(dit).__name__} critic")
    return dim


def regression_pairs(cfg, student: FlowVideoModel, teacher: FlowVideoModel, world, quiet: bool = False) -> dict | None:
    """The ODE pairs of ``dmd.regression_weight`` (None when it is 0), checked against the student."""
    if not cfg.dmd.regression_weight:
        return None
    # an ODE-init first stage made these very pairs (same seed) in its own folder: reuse them
    made = Path(cfg.out_dir) / ("ode_init" if cfg.ode_init_first else "") / "ode_pairs.pt"
    path = Path(cfg.dmd.regression_pairs) if cfg.dmd.regression_pairs else made
    if cfg.dmd.regression_pairs and not path.is_file():
        raise UsageError(f"dmd.regression_pairs={path} does not exist (an ODE init run's ode_pairs.pt, or leave it "
                         f"empty to make the pairs at the start)")
    pairs = ode_pairs(path, teacher, student, world, cfg.ode, cfg.train.seed, quiet)
    levels, frames = len(student.streaming_sigmas()) - 1, student.latent_frames(world.cfg.frames)
    want = (levels, *student.latent_shape(1, frames)[1:])
    if tuple(pairs["states"].shape[1:]) != want:
        raise UsageError(f"dmd.regression_pairs={path} holds states of shape {tuple(pairs['states'].shape[1:])} "
                         f"(levels, frames, channels, h, w); this student needs {want}")
    return pairs


@METHODS.register("dmd")
def build(cfg, student, teacher, critic, world, quiet: bool = False) -> DMDMethod:
    """DMD from a distill recipe config and its built roles."""
    return DMDMethod(cfg.dmd, student, teacher, world, cfg.optim, cfg.critic_optim, cfg.train.seed, critic=critic,
                     pairs=regression_pairs(cfg, student, teacher, world, quiet))
