"""Qwen2-VL's video preparation in torch, differentiable to the pixels.

The transformers processor works on detached frames; genrl's policies and the
VideoReward backend need gradients at the pixels (saliency, Stream-R1), so the
steps are rebuilt here, rule for rule with qwen-vl-utils' video reading and the
Qwen2-VL video processor:

- frame count: ``fps`` frames a second of the source (at least ``min_frames``, at most
  ``max_frames``, rounded to an even number, never more than the video has), picked at
  ``linspace(0, n - 1, count).round()``;
- size: the nearest multiple of 28 on each side with the area inside
  [``min_pixels``, ``max_pixels``] (``smart_resize``), bicubic with antialiasing, then
  rounded to 8 bits as a uint8 frame would be (straight-through: gradients pass);
- CLIP normalisation and 2-frame temporal patches in Qwen2-VL's patch order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionPrepConfig:
    """Qwen2-VL video pixel preparation."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 128 * 28 * 28
    """Lower bound of pixels per frame after the resize (qwen-vl-utils' video minimum)."""
    max_pixels: int = 200704
    """Upper bound of pixels per frame (VideoReward: 448 * 448)."""
    fps: float = 2.0
    """Frames per second sampled from the video (VideoReward: 2)."""
    min_frames: int = 4
    """Fewest frames sampled (qwen-vl-utils: 4)."""
    max_frames: int = 768
    """Most frames sampled."""
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Nearest size with both sides multiples of ``factor`` and area within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def smart_nframes(total: int, video_fps: float, fps: float, min_frames: int = 4, max_frames: int = 768) -> int:
    """Frames to sample from ``total`` frames at ``video_fps``: ``fps`` a second, within bounds, even."""
    lo = math.ceil(min_frames / 2) * 2
    hi = math.floor(min(max_frames, total) / 2) * 2
    n = round(min(max(total / video_fps * fps, lo), hi) / 2) * 2
    n = min(n, total)
    if n < 2:
        raise ValueError(f"a video of {total} frame(s) is too short: Qwen2-VL reads at least 2")
    return n


def frame_indices(total: int, video_fps: float, cfg: VisionPrepConfig) -> list[int]:
    """Indices of the frames read from a video of ``total`` frames at ``video_fps``."""
    n = smart_nframes(total, video_fps, cfg.fps, cfg.min_frames, cfg.max_frames)
    return torch.linspace(0, total - 1, n).round().long().tolist()


def target_size(height: int, width: int, cfg: VisionPrepConfig) -> tuple[int, int]:
    return smart_resize(height, width, cfg.patch_size * cfg.merge_size, cfg.min_pixels, cfg.max_pixels)


def resize_frames(video: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1] -> ``size``, bicubic with antialiasing, clamped, 8-bit rounded (straight-through)."""
    if tuple(video.shape[-2:]) != tuple(size):
        video = F.interpolate(video, size=size, mode="bicubic", antialias=True, align_corners=False)
    video = video.clamp(0, 1)
    if quantize:
        video = video + ((video * 255).round() / 255 - video).detach()
    return video


def patchify(video: torch.Tensor, cfg: VisionPrepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3, h, w) in [0, 1] with h, w multiples of 28 -> normalised patches (N, 3*tp*p*p) and grid_thw (1, 3)."""
    mean = torch.tensor(cfg.mean, dtype=video.dtype, device=video.device)[:, None, None]
    std = torch.tensor(cfg.std, dtype=video.dtype, device=video.device)[:, None, None]
    video = (video - mean) / std
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -video.shape[0] % tp:
        video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)))
    h, w = video.shape[-2:]
    gt, gh, gw = video.shape[0] // tp, h // p, w // p
    x = video.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * tp * p * p), torch.tensor([[gt, gh, gw]])


def prepare_pixels(video: torch.Tensor, cfg: VisionPrepConfig, quantize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (``smart_resize``) and patchify every frame of (F, 3, H, W) in [0, 1] (no frame sampling)."""
    size = target_size(*video.shape[-2:], cfg)
    if quantize or tuple(video.shape[-2:]) != size:
        video = resize_frames(video, size, quantize)
    return patchify(video, cfg)
