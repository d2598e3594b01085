"""CLIP reward through open_clip: a second opinion that shares no weights with training.

TA = mean over frames of the scaled cosine similarity between frame and prompt
embeddings (CLIP score); MQ proxy = mean cosine similarity of consecutive frame
embeddings (temporal consistency). CLIP says nothing about visual quality, so
this backend has no VQ axis. Weights come from a local file (``pretrained``);
the tokenizer's vocabulary ships inside open_clip, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardModel, register_reward

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipReward(RewardModel):
    axes = ("mq", "ta")
    frames_read = "every frame, resized to the CLIP image size"

    def __init__(self, clip_model: nn.Module, tokenizer, image_size: int = 224):
        super().__init__()
        self.clip, self.tokenizer, self.image_size = clip_model, tokenizer, image_size

    def _frames(self, videos: torch.Tensor) -> torch.Tensor:
        x = videos.flatten(0, 1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
        return (x - mean) / std

    def read_file(self, path) -> torch.Tensor:
        """Every frame at CLIP's square input size, resized as it is decoded."""
        from genrl.io.video import read_resized

        return read_resized(path, (self.image_size, self.image_size))

    def raw_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        B, Fr = videos.shape[:2]
        img = F.normalize(self.clip.encode_image(self._frames(videos)), dim=-1).unflatten(0, (B, Fr))
        txt = F.normalize(self.clip.encode_text(self.tokenizer(prompts).to(videos.device)), dim=-1)
        ta = 100.0 * (img * txt[:, None]).sum(-1).mean(1)
        mq = (img[:, 1:] * img[:, :-1]).sum(-1).mean(1) if Fr > 1 else torch.ones(B, device=videos.device)
        return {"mq": mq, "ta": ta}


@register_reward("clip")
def clip_reward(weights: str = "", model: str = "ViT-B-32", **_) -> ClipReward:
    """open_clip model ``model`` with weights from the local file ``weights``."""
    import open_clip

    from genrl.errors import UsageError

    if not weights or not Path(weights).is_file():
        raise UsageError("clip needs --weights FILE: a local open_clip checkpoint for the model (default ViT-B-32)")
    clip_model, _, _ = open_clip.create_model_and_transforms(model, pretrained=weights)
    size = clip_model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipReward(clip_model.eval(), open_clip.get_tokenizer(model), size).requires_grad_(False)
