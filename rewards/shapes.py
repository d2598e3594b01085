"""The embedded shapes reward model: small video encoder + text encoder + VQ/MQ/TA heads.

Frames go through a small conv stack; a temporal conv over frame features and
their differences gives motion features; prompts are a bag of word embeddings
(each world word names one attribute value, so order carries nothing). VQ reads
frame features, MQ motion features, TA both together with the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrl.models.text import WordTokenizer

from .base import RewardModel


@dataclass
class ShapesRewardConfig:
    """Shapes reward model sizes."""

    width: int = 16
    """Conv width of the frame encoder."""
    dim: int = 96
    """Feature width of frames, motion and text."""


class ShapesReward(RewardModel):
    frames_read = "all frames, at 32x32"

    def __init__(self, cfg: ShapesRewardConfig):
        super().__init__()
        self.cfg = cfg
        w, d = cfg.width, cfg.dim
        act = nn.SiLU()
        self.frame_encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), act,
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), act,
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), act,
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), act,
            nn.Flatten(), nn.LazyLinear(d), act,
        )
        self.motion = nn.Sequential(nn.Conv1d(2 * d, d, 3, padding=1), act, nn.Conv1d(d, d, 3, padding=1), act)
        self.tokenizer = WordTokenizer()
        self.words = nn.EmbeddingBag(len(self.tokenizer.vocab), d, mode="mean", padding_idx=0)
        self.text_mlp = nn.Sequential(nn.Linear(d, d), act)
        self.vq_head = nn.Sequential(nn.Linear(d, d), act, nn.Linear(d, 1))
        self.mq_head = nn.Sequential(nn.Linear(2 * d, d), act, nn.Linear(d, 1))
        self.ta_head = nn.Sequential(nn.Linear(4 * d, d), act, nn.Linear(d, 1))
        with torch.no_grad():  # materialise the lazy layer at the world's frame size
            self.frame_encoder(torch.zeros(1, 3, 32, 32))

    def raw_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        B, Fr = videos.shape[:2]
        x = videos * 2 - 1
        feats = self.frame_encoder(x.flatten(0, 1)).unflatten(0, (B, Fr))  # (B, F, d)
        diffs = torch.cat((torch.zeros_like(feats[:, :1]), feats[:, 1:] - feats[:, :-1]), dim=1)
        motion = self.motion(torch.cat((feats, diffs), dim=-1).transpose(1, 2)).transpose(1, 2)  # (B, F, d)
        ids, _ = self.tokenizer(prompts)
        text = self.text_mlp(self.words(ids.to(videos.device)))  # (B, d)
        f_pool, m_pool = feats.mean(1), motion.mean(1)
        m_var = motion.std(1) if Fr > 1 else torch.zeros_like(m_pool)
        video = torch.cat((f_pool, m_pool), dim=-1)
        return {
            "vq": self.vq_head(f_pool).squeeze(-1),
            "mq": self.mq_head(torch.cat((m_pool, m_var), dim=-1)).squeeze(-1),
            "ta": self.ta_head(torch.cat((video, text, video[:, : self.cfg.dim] * text), dim=-1)).squeeze(-1),
        }
