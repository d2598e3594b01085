"""The embedded shapes reward model: small video encoder + VQ/MQ/TA heads.

Frames go through a small conv stack, and so do the pixel differences between
consecutive frames, each next to its frame (jitter, freezes and teleports show up
there directly); a temporal conv over those gives motion features. VQ reads frame
features, MQ motion features. TA reads the prompt as the world's attribute words and scores how
likely the video shows each named value: the mean log-probability of those
values under per-attribute heads on the video features (attributes the prompt
does not name do not count). That structure is what makes text alignment
learnable from pairwise preferences alone in a few minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrl.worlds.shapes import ATTRIBUTES, VALUES, parse_caption

from .base import RewardModel


@dataclass
class ShapesRewardConfig:
    """Shapes reward model sizes."""

    width: int = 16
    """Conv width of the frame encoder."""
    dim: int = 96
    """Feature width of frames, motion and text."""


MOTION_ATTRIBUTES = ("direction", "speed")
"""Read from the motion path only. With one head over all features, direction was never
learned: in training each (colour, shape) pair moves in only some directions, and the head
guessed from the pair instead (0.34 on train clips, 0.02 on held-out triples)."""


class _SpatialPool(nn.Module):
    """(B, C, H, W) -> (B, 2C): mean and max over positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x.mean((2, 3)), x.amax((2, 3))), dim=1)


def _conv_encoder(w: int, d: int, cin: int = 3) -> nn.Sequential:
    """cin x32x32 -> d features: a 3x3 conv, three stride-2 convs, mean+max pooling, a linear layer.

    GroupNorm after every conv: without it the signal shrinks layer by layer and the
    features of different clips were all but equal at initialisation (std ~1e-3).
    Pooling over positions, not a linear layer over the flattened map: the shape can be
    anywhere, and with a position-wise linear layer the attribute heads stayed near chance
    on direction (0.32 after 3,000 steps) because each position had to be learned anew.
    """
    act = nn.SiLU()

    def conv(cin, cout, k, s, p):
        return [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.GroupNorm(4, cout), act]

    return nn.Sequential(
        *conv(cin, w, 3, 1, 1), *conv(w, 2 * w, 4, 2, 1), *conv(2 * w, 2 * w, 4, 2, 1), *conv(2 * w, 2 * w, 4, 2, 1),
        _SpatialPool(), nn.Linear(4 * w, d), nn.LayerNorm(d), act,
    )


FRAME_CHUNK = 256
"""Frames per pass of the per-frame encoders when scoring without gradients (memory stays flat in length)."""


class ShapesReward(RewardModel):
    frames_read = "all frames, at 32x32"

    def unavailable(self, frames: torch.Tensor, prompt: str) -> dict[str, str]:
        from genrl.worlds.shapes import parse_caption

        out = super().unavailable(frames, prompt)
        if all(v is None for v in parse_caption(prompt).values()):
            out["ta"] = "have a prompt naming nothing the shapes world knows"
        return out

    def __init__(self, cfg: ShapesRewardConfig):
        super().__init__()
        self.cfg = cfg
        w, d = cfg.width, cfg.dim
        act = nn.SiLU()
        self.frame_encoder = _conv_encoder(w, d)
        self.diff_encoder = _conv_encoder(w // 2, d, cin=6)
        self.motion = nn.Sequential(nn.Conv1d(d, d, 3, padding=1), nn.GroupNorm(4, d), act,
                                    nn.Conv1d(d, d, 3, padding=1), nn.GroupNorm(4, d), act)
        self.look_sizes = [len(VALUES[a]) for a in ATTRIBUTES if a not in MOTION_ATTRIBUTES]
        self.move_sizes = [len(VALUES[a]) for a in ATTRIBUTES if a in MOTION_ATTRIBUTES]
        self.vq_head = nn.Sequential(nn.Linear(d, d), act, nn.Linear(d, 1))
        self.mq_head = nn.Sequential(nn.Linear(2 * d, d), act, nn.Linear(d, 1))
        self.look_head = nn.Sequential(nn.Linear(d, d), act, nn.Linear(d, sum(self.look_sizes)))
        self.move_head = nn.Sequential(nn.Linear(2 * d, d), act, nn.Linear(d, sum(self.move_sizes)))

    def video_features(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, 3d): pooled frame features, pooled motion features and their spread over time."""
        Fr = videos.shape[1]
        chunk = Fr if torch.is_grad_enabled() else FRAME_CHUNK  # without gradients, memory stays flat in length
        parts = [self._encode_frames(videos, lo, min(Fr, lo + chunk)) for lo in range(0, Fr, chunk)]
        feats, diffs = (torch.cat(p, dim=1) if len(parts) > 1 else p[0] for p in zip(*parts))
        motion = self.motion(diffs.transpose(1, 2)).transpose(1, 2)  # (B, F, d)
        m_var = motion.std(1) if Fr > 1 else torch.zeros_like(motion[:, 0])
        return torch.cat((feats.mean(1), motion.mean(1), m_var), dim=-1)

    def _encode_frames(self, videos: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame and difference features (B, hi - lo, d) of frames lo..hi-1."""
        B = videos.shape[0]
        x = videos[:, lo:hi]
        ext = videos[:, max(lo - 1, 0):hi]
        steps = ext[:, 1:] - ext[:, :-1]
        if lo == 0:
            steps = torch.cat((torch.zeros_like(x[:, :1]), steps), dim=1)
        feats = self.frame_encoder((x * 2 - 1).flatten(0, 1)).unflatten(0, (B, hi - lo))
        # each difference next to the frame it leads to: a 1-px strip of change looks the same
        # on the leading and the trailing edge; only the frame says on which side the shape is
        diffs = self.diff_encoder(torch.cat((x * 2 - 1, steps), dim=2).flatten(0, 1)).unflatten(0, (B, hi - lo))
        return feats, diffs

    def read_file(self, path) -> torch.Tensor:
        """Every frame at the 32x32 the model reads, resized as it is decoded (memory does not grow with resolution)."""
        from genrl.io.video import read_resized

        return read_resized(path, (32, 32))

    def raw_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        v = self.video_features(videos)
        d = self.cfg.dim
        return {
            "vq": self.vq_head(v[:, :d]).squeeze(-1),
            "mq": self.mq_head(v[:, d:]).squeeze(-1),
            "ta": self.text_alignment(v, prompts),
        }

    def attribute_logprobs(self, video_features: torch.Tensor) -> list[torch.Tensor]:
        """Per attribute, log-probabilities (B, n_values) of each value being shown."""
        d = self.cfg.dim
        look = iter(self.look_head(video_features[:, :d]).split(self.look_sizes, dim=-1))
        move = iter(self.move_head(video_features[:, d:]).split(self.move_sizes, dim=-1))
        logits = [next(move) if a in MOTION_ATTRIBUTES else next(look) for a in ATTRIBUTES]
        return [torch.log_softmax(l, dim=-1) for l in logits]

    def text_alignment(self, video_features: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        logp = self.attribute_logprobs(video_features)
        scores = []
        for b, prompt in enumerate(prompts):
            named = parse_caption(prompt)
            terms = [logp[i][b, VALUES[a].index(named[a])] for i, a in enumerate(ATTRIBUTES) if named[a] is not None]
            scores.append(torch.stack(terms).mean() if terms else logp[0][b].new_zeros(()))
        return torch.stack(scores)
