"""The one reward interface: (videos, prompts) -> per-axis scores, differentiable to the pixels.

Videos are (B, F, 3, H, W) in [0, 1]. Every backend returns raw scores for the
axes it knows (vq = visual quality, mq = motion quality, ta = text alignment),
z-normalised with its stored mean/std, and gradient saliency maps over
(F, H, W). Backends register by name so a config says ``reward.name: shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrl.registry import REWARDS

AXES = ("vq", "mq", "ta")


@dataclass
class RewardScores:
    raw: dict[str, torch.Tensor]
    """Axis -> (B,) raw head outputs (keep the autograd graph)."""
    z: dict[str, torch.Tensor]
    """Axis -> (B,) z-normalised scores."""

    @property
    def overall(self) -> torch.Tensor:
        """Mean of the z-normalised axes (every backend; VideoAlign's own inference reports their sum)."""
        return torch.stack([self.z[a] for a in self.z]).mean(dim=0)


class RewardModel(nn.Module):
    """Base class: subclasses implement ``raw_scores`` and say which frames they read."""

    axes: tuple[str, ...] = AXES
    frames_read: str = "all frames"

    def __init__(self):
        super().__init__()
        self.register_buffer("score_mean", torch.zeros(len(self.axes)))
        self.register_buffer("score_std", torch.ones(len(self.axes)))

    def raw_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def read_indices(self, num_frames: int) -> list[int] | None:
        """Frames a video of ``num_frames`` frames is scored on (None: all of them)."""
        return None

    def read_file(self, path) -> torch.Tensor:
        """A video file as this backend reads it: (F, 3, H, W) in [0, 1], ready for :meth:`score_read`."""
        from genrl.io.video import read_video

        return read_video(path)

    def unavailable(self, frames: torch.Tensor, prompt: str) -> dict[str, str]:
        """Axes this model cannot honestly score for one video (axis -> why), reported as n/a.

        Motion needs at least two frames; subclasses add what their text side cannot read."""
        return {"mq": "are shorter than 2 frames"} if "mq" in self.axes and frames.shape[0] < 2 else {}

    def score_read(self, frames: torch.Tensor, prompt: str) -> RewardScores:
        """Scores of one video returned by :meth:`read_file`."""
        return self(frames[None], [prompt])

    def normalise(self, raw: dict[str, torch.Tensor]) -> RewardScores:
        z = {a: (raw[a] - self.score_mean[i]) / self.score_std[i] for i, a in enumerate(self.axes)}
        return RewardScores(raw, z)

    def forward(self, videos: torch.Tensor, prompts: list[str]) -> RewardScores:
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be (B, F, 3, H, W), got {tuple(videos.shape)}")
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"{videos.shape[0]} videos but {len(prompts)} prompts")
        return self.normalise(self.raw_scores(videos, prompts))

    def saliency(self, videos: torch.Tensor, prompts: list[str], axes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Axis -> (B, F, H, W) channel-norm of d(raw score)/d(pixels). The reward model stays frozen."""
        return self.scores_and_saliency(videos, prompts, axes)[1]

    def scores_and_saliency(self, videos: torch.Tensor, prompts: list[str], axes=None) -> tuple[RewardScores, dict[str, torch.Tensor]]:
        """One forward pass: detached scores, and per-axis saliency maps (B, F, H, W) for ``axes``."""
        axes = tuple(axes or self.axes)
        x = videos.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scores = self(x, prompts)
            sal = {}
            for a in axes:
                out = scores.raw[a].sum()
                # an axis that does not depend on the pixels (e.g. TA of a prompt naming nothing the model knows)
                g = torch.autograd.grad(out, x, retain_graph=True, allow_unused=True)[0] if out.requires_grad else None
                sal[a] = torch.zeros_like(x[:, :, 0]) if g is None else g.norm(dim=2)
        idx = self.read_indices(videos.shape[1])
        if idx is not None:  # frames the model never read get their neighbours' saliency
            sal = {a: spread_saliency(m, idx) for a, m in sal.items()}
        detached = RewardScores({k: v.detach() for k, v in scores.raw.items()}, {k: v.detach() for k, v in scores.z.items()})
        return detached, sal

    @torch.no_grad()
    def calibrate(self, videos: torch.Tensor, prompts: list[str]) -> None:
        """Store mean/std of raw scores on reference videos (for z-normalisation)."""
        raw = self.raw_scores(videos, prompts)
        self.score_mean.copy_(torch.stack([raw[a].mean() for a in self.axes]))
        self.score_std.copy_(torch.stack([raw[a].std().clamp_min(1e-4) for a in self.axes]))


def spread_saliency(sal: torch.Tensor, read: list[int]) -> torch.Tensor:
    """(B, F, H, W) saliency known on frames ``read`` -> every frame, linearly between read frames
    (the nearest read frame before the first and after the last)."""
    read = sorted(set(read))
    F = sal.shape[1]
    if len(read) == F:
        return sal
    known = torch.tensor(read, dtype=torch.float32)
    f = torch.arange(F, dtype=torch.float32)
    right = torch.searchsorted(known, f).clamp(1, len(read) - 1) if len(read) > 1 else torch.zeros(F, dtype=torch.long)
    left = (right - 1).clamp_min(0)
    span = (known[right] - known[left]).clamp_min(1e-9)
    w = ((f - known[left]) / span).clamp(0, 1)
    src = sal[:, read]
    w = w.to(sal)[None, :, None, None]
    return (1 - w) * src[:, left] + w * src[:, right]


def register_reward(name: str):
    """Register a backend builder under ``name`` in genrl's reward registry (decorator)."""
    return REWARDS.register(name)


def reward_names() -> list[str]:
    return REWARDS.names()


def build_reward(name: str, **kwargs) -> RewardModel:
    """Build a reward backend by name (``shapes``, ``clip``, ``videoreward``)."""
    return REWARDS.get(name)(**kwargs)
