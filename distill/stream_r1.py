"""Stream-R1: DMD weighted by a video reward model, at the rollout and the element level.

Inter-Reliability: each rollout's DMD loss is scaled by exp(beta * r), where r
combines the reward model's z-normalised axes (VQ, MQ, TA) as
    r = mean_m z_m - lambda * std_m(Delta_m),
Delta_m = mean of axis m over the recent half of a history window minus its
early half: when the axes improve unevenly the whole batch is trusted less,
which keeps one axis from running away with the others. No gradient flows
through r.

Intra-Perplexity: the reward model is back-propagated to the decoded pixels
(the reward model frozen, the student's graph untouched) to get per-axis
saliency |dR_m/dx|, fused with softmax(-z/T) (weaker axes weigh more), resized
to the latent grid and factored into a temporal weight per frame and a spatial
weight per pixel, each floored and mean-normalised; W = T_f * S_fhw / mean.

beta = 0 and ``intra = False`` give exactly plain DMD (same code path, same seeds).
Departures from the paper: saliency is computed on the exit-step rollout that
the DMD loss uses (one reward pass per generator step), and z-normalisation
uses the reward model's stored statistics (fixed, not running).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genrl.config import check
from genrl.registry import METHODS
from genrl.stats import effective_sample_size
from genrl.train.trainer import Role
from genrl.worlds.probe import ProbeConfig, foreground
from genrl.worlds.shapes import ShapesWorld

from .dmd import DMDMethod, regression_pairs


# ------------------------------------------------------------------------ maths
def balance_penalty(history: torch.Tensor, warmup: int) -> torch.Tensor:
    """std over axes of (recent-half mean - early-half mean) of a (T, M) history.

    0 until the history holds ``warmup`` steps (at least 2): halves of a few steps are
    noise, and early in training the penalty would rescale every loss at random.
    """
    if history.shape[0] < max(2, warmup):
        return history.new_zeros(())
    half = history.shape[0] // 2
    delta = history[-half:].mean(0) - history[:half].mean(0)
    return delta.std(unbiased=False)


def combined_reward(z: torch.Tensor, history: torch.Tensor, lam: float, warmup: int) -> torch.Tensor:
    """r (B,) = mean over axes of z (B, M) minus lambda * balance penalty of the (T, M) history (T may be 0)."""
    r = z.mean(dim=1)
    if lam:
        r = r - lam * balance_penalty(history, warmup)
    return r


def rollout_weights(r: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.exp(beta * r.detach())


def fuse_saliency(saliency: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """S (B, F, H, W) = sum_m softmax(-z / T)_m S_m, from saliency (B, M, F, H, W) and z (B, M)."""
    w = torch.softmax(-z.detach() / temperature, dim=1)
    return (w[:, :, None, None, None] * saliency).sum(dim=1)


def object_saliency_share(S: torch.Tensor, pixels: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video: the share of saliency mass S (B, F, H, W) on the object's pixels, and the object's share of them.

    The object is where a frame of ``pixels`` (B, F, C, H, W) differs from the frame's median (background) colour
    by more than ``threshold``, the attribute probe's foreground rule. A saliency share well above the area share
    means the reward's gradient looks at the object; about equal, it is spread over the frame.
    """
    mask = foreground(pixels, threshold)[2].to(S.dtype)  # (B, F, H, W)
    share = (S * mask).flatten(1).sum(1) / S.flatten(1).sum(1).clamp_min(1e-12)
    return share, mask.flatten(1).mean(1)


def _minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), torch.ones_like(x))


def temporal_weights(S: torch.Tensor, tau_min: float) -> torch.Tensor:
    """(B, F): per-frame mean saliency, min-max normalised, floored at tau_min, mean 1."""
    p = _minmax(S.mean(dim=(2, 3)), (1,)).clamp_min(tau_min)
    return p / p.mean(dim=1, keepdim=True)


def spatial_weights(S: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """(B, F, H, W): per-frame min-max normalised saliency, floored at sigma_min, per-frame mean 1."""
    s = _minmax(S, (2, 3)).clamp_min(sigma_min)
    return s / s.mean(dim=(2, 3), keepdim=True)


def element_weights(S: torch.Tensor, tau_min: float, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W (B, F, H, W) = T_f * S_fhw, mean 1 per rollout (T and each frame of S have mean 1); also returns T (B, F)."""
    t = temporal_weights(S, tau_min)
    # T has mean 1 over frames and S mean 1 over each frame's pixels, so their product already has mean 1
    return t[:, :, None, None] * spatial_weights(S, sigma_min), t


def saliency_to_latent(S: torch.Tensor, frames: int, hw: tuple[int, int]) -> torch.Tensor:
    """Pixel saliency (B, F_px, H, W) -> the latent grid (B, frames, h, w): mean over the pixels of each latent cell.

    Equal frame counts pool space only. A causal video VAE that maps 4k+1 pixel frames to
    k+1 latent frames (Wan2.1) gives latent frame 0 pixel frame 0 and latent frame i the
    pixel frames 4i-3..4i; any other ratio is pooled evenly over time.
    """
    S = F.adaptive_avg_pool2d(S, hw)
    n = S.shape[1]
    if n == frames:
        return S
    ratio = (n - 1) // max(frames - 1, 1)
    if (frames - 1) * ratio + 1 == n:  # frames 1 gives 1 == n, handled above
        rest = S[:, 1:].unflatten(1, (frames - 1, ratio)).mean(dim=2)
        return torch.cat((S[:, :1], rest), dim=1)
    return F.adaptive_avg_pool3d(S[:, None], (frames, *hw))[:, 0]


# ----------------------------------------------------------------------- method
@dataclass
class StreamR1Config:
    """Stream-R1 weighting knobs."""

    beta: float = check(2.0, "[-20, 20]")
    """Inter-Reliability strength: rollout weight exp(beta * r). 0 = off."""
    beta_warmup: int = check(0, ">=0")
    """Generator steps over which beta ramps linearly from 0 (step 1: every rollout weighs 1, as in plain DMD)
    to its value (reached at step beta_warmup + 1); 0 = the full beta from the first step."""
    lam: float = check(0.5, ">=0")
    """Weight of the axis-balance penalty in r."""
    window: int = check(50, ">=1")
    """History window (generator steps) of per-axis mean rewards for the balance penalty."""
    balance_warmup: int = check(50, ">=0")
    """Generator steps of history before the balance penalty counts (before it, r = mean z)."""
    temperature: float = check(1.0, ">0")
    """T of the softmax(-z / T) fusing per-axis saliency."""
    tau_min: float = check(0.2, "[0, 1]")
    """Floor of the temporal weights (after min-max normalisation)."""
    sigma_min: float = check(0.15, "[0, 1]")
    """Floor of the spatial weights (after per-frame min-max normalisation)."""
    intra: bool = True
    """Use the saliency weights W (False = W = 1)."""
    axes: list[str] = check(factory=lambda: ["vq", "mq", "ta"], rule="nonempty and each one of: vq, mq, ta")
    """Reward axes that count."""
    reward: str = "shapes"
    """Reward backend name."""
    reward_weights: str = "shapes-reward"
    """Weights of the reward backend (name or path)."""
    reward_calibration: str = ""
    """vlm backend: a generator (built-in name or path) whose own videos set the reward's z-normalisation (the
    student's starting point puts z on its rollouts near N(0, 1)); empty: the backend's real reference clips."""
    max_weight: float = check(10.0, ">0")
    """Upper clamp of the rollout weights (guards against a runaway exp)."""


class StreamR1Method(DMDMethod):
    """DMD whose loss weights come from the reward model (the only hook it overrides)."""

    name = "stream_r1"

    def __init__(self, sr1: StreamR1Config, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from rewards.base import build_reward

        self.sr1 = sr1
        if sr1.reward_calibration and sr1.reward != "vlm":
            from genrl.errors import UsageError

            raise UsageError(f"config key 'stream_r1.reward_calibration' is for the vlm reward; stream_r1.reward is "
                             f"{sr1.reward!r}")
        extra = {"calibrate_on": sr1.reward_calibration} if sr1.reward_calibration else {}
        self.reward = build_reward(sr1.reward, weights=sr1.reward_weights, **extra).eval().requires_grad_(False)
        self.history: deque[list[float]] = deque(maxlen=sr1.window)
        self.step = 1  # the generator step being taken (set by train_step; the trainer counts from 1)

    def current_beta(self) -> float:
        """beta at this step: ramped linearly from 0 over the first ``beta_warmup`` steps."""
        n = self.sr1.beta_warmup
        return self.sr1.beta * min(1.0, (self.step - 1) / n) if n else self.sr1.beta

    def train_step(self, step: int, ctx):
        self.step = step
        return super().train_step(step, ctx)

    def loss_weights(self, x: torch.Tensor, prompts: list[str]):
        cfg = self.sr1
        pixels = self.student.decode(x.detach())
        sal = None
        if cfg.intra:
            scores, maps = self.reward.scores_and_saliency(pixels, prompts, cfg.axes)
            sal = torch.stack([maps[a] for a in cfg.axes], dim=1)  # (B, M, F, H, W)
        else:
            with torch.no_grad():
                scores = self.reward(pixels, prompts)
        z = torch.stack([scores.z[a] for a in cfg.axes], dim=1)  # (B, M), detached
        history = torch.tensor(list(self.history)).reshape(-1, z.shape[1])  # (T, M) in float32; T = 0 at first
        r = combined_reward(z, history, cfg.lam, cfg.balance_warmup)
        self.history.append(z.mean(0).tolist())
        beta = self.current_beta()
        raw_w = rollout_weights(r, beta)
        rw = raw_w.clamp_max(cfg.max_weight)
        metrics = {f"reward_{a}": float(z[:, i].mean()) for i, a in enumerate(cfg.axes)}
        metrics.update(reward_r=float(r.mean()), rollout_beta=beta, rollout_weight_max=float(rw.max()),
                       rollout_weight_min=float(rw.min()), rollout_ess=effective_sample_size(rw),
                       rollout_weights_clamped=float((raw_w > cfg.max_weight).float().mean()))  # share hitting max_weight
        W = None
        if sal is not None:
            S = fuse_saliency(sal, z, cfg.temperature)
            if isinstance(self.world, ShapesWorld):  # where the reward looks: object or background
                share, area = object_saliency_share(S, pixels, ProbeConfig.fg_threshold)
                metrics.update(saliency_on_object=float(share.mean()), object_area=float(area.mean()))
            S = saliency_to_latent(S, x.shape[1], x.shape[-2:])  # pixel grid -> latent grid
            W, t = element_weights(S, cfg.tau_min, cfg.sigma_min)
            W = W[:, :, None]  # broadcast over latent channels
            metrics.update({f"temporal_w{f}": float(v) for f, v in enumerate(t.mean(0).tolist())})
        return W, rw, metrics

    def roles(self):
        return {**super().roles(), "reward": Role(self.reward, graph=self.sr1.intra)}  # saliency: gradients to pixels

    def extra_state(self):
        return {"history": list(self.history)}

    def load_extra_state(self, state):
        self.history.clear()
        self.history.extend(state.get("history", []))


@METHODS.register("stream_r1")
def build(cfg, student, teacher, critic, world, quiet: bool = False) -> StreamR1Method:
    """Stream-R1 from a distill recipe config and its built roles."""
    return StreamR1Method(cfg.stream_r1, cfg.dmd, student, teacher, world, cfg.optim, cfg.critic_optim, cfg.train.seed,
                          critic=critic, pairs=regression_pairs(cfg, student, teacher, world, quiet))
