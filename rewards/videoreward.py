"""VideoReward (VideoAlign): a Qwen2-VL-2B reward model with VQ/MQ/TA heads at special tokens.

Loaded from a local checkpoint folder through transformers; nothing is
downloaded. The processor's pixel preparation (fps sampling, smart resize to
multiples of 28 within ``max_pixels``, CLIP normalisation, 2-frame temporal
patches in Qwen2-VL's patch order) is rebuilt in torch so that gradients reach
the input pixels — the transformers processor works on detached uint8 frames.

The reward is read where the three special tokens sit in the prompt: a linear
head (``rm_head``) on the last hidden state there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import AXES, RewardModel, register_reward

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
# z-normalisation statistics VideoAlign reports for its released checkpoint
REFERENCE_STATS = {"vq": (3.6757, 2.2476), "mq": (1.1646, 1.3811), "ta": (2.8105, 2.5121)}

# genrl's own short template. The checkpoint was trained with VideoAlign's long
# "detailed_special" template: pass it as a file (``template_file``) for faithful scores.
DEFAULT_TEMPLATE = (
    "Rate this generated video from 0 to 10 on three separate criteria.\n"
    "Visual quality (clarity, detail, plausibility of single frames): <|VQ_reward|>\n"
    "Motion quality (stability, smoothness, natural and sufficient movement): <|MQ_reward|>\n"
    "Text alignment with the prompt '{text_prompt}': <|TA_reward|>\n"
)


@dataclass
class VisionPrepConfig:
    """Qwen2-VL video pixel preparation."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 200704
    """Upper bound of pixels per frame (VideoReward uses 448 * 448)."""
    fps: float = 2.0
    """Frames per second sampled from the video (VideoReward: 2)."""
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


def sample_frames(video: torch.Tensor, source_fps: float, target_fps: float) -> torch.Tensor:
    """Pick frames of (F, C, H, W) at ``target_fps`` (at least 2, an even count)."""
    n = video.shape[0]
    want = max(2, int(round(n / source_fps * target_fps)))
    want = min(n if n % 2 == 0 else n + 1, want + want % 2)
    idx = torch.linspace(0, n - 1, want).round().long()
    return video[idx]


def prepare_pixels(video: torch.Tensor, cfg: VisionPrepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable Qwen2-VL video preparation of (F, 3, H, W) in [0, 1].

    Returns flattened patches (grid_t*grid_h*grid_w, 3*tp*p*p) and grid_thw (1, 3).
    """
    factor = cfg.patch_size * cfg.merge_size
    H, W = video.shape[-2:]
    h, w = smart_resize(H, W, factor, cfg.min_pixels, cfg.max_pixels)
    if (h, w) != (H, W):
        # clamp like the processor's uint8 output (bicubic overshoots), keeping gradients inside the range
        video = F.interpolate(video, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = torch.tensor(cfg.mean, dtype=video.dtype, device=video.device)[:, None, None]
    std = torch.tensor(cfg.std, dtype=video.dtype, device=video.device)[:, None, None]
    video = (video - mean) / std
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -video.shape[0] % tp:
        video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)))
    gt, gh, gw = video.shape[0] // tp, h // p, w // p
    x = video.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * tp * p * p), torch.tensor([[gt, gh, gw]])


@dataclass
class VideoRewardConfig:
    """VideoReward adapter settings."""

    path: str = ""
    """Local checkpoint folder (config.json, weights with rm_head, tokenizer files)."""
    template_file: str = ""
    """Prompt template with {text_prompt} and the three special tokens; empty = genrl's short one."""
    source_fps: float = 8.0
    """Frame rate the input videos are assumed to have."""
    vision: VisionPrepConfig = field(default_factory=VisionPrepConfig)


class VideoRewardModel(RewardModel):
    frames_read = "frames resampled to 2 fps, resized to multiples of 28 within max_pixels"

    def __init__(self, model: nn.Module, tokenizer, cfg: VideoRewardConfig, rm_head: nn.Linear | None = None):
        super().__init__()
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        hidden = model.config.text_config.hidden_size if hasattr(model.config, "text_config") else model.config.hidden_size
        self.rm_head = rm_head or nn.Linear(hidden, 1, bias=False)
        self.template = Path(cfg.template_file).read_text() if cfg.template_file else DEFAULT_TEMPLATE
        self.special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        for i, a in enumerate(AXES):
            self.score_mean[i], self.score_std[i] = REFERENCE_STATS[a]

    def _input_ids(self, prompt: str, n_video_tokens: int) -> torch.Tensor:
        cfg = self.model.config
        text = self.template.format(text_prompt=prompt)
        before = self.tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
        after = self.tokenizer(text + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids = before + [cfg.vision_start_token_id] + [cfg.video_token_id] * n_video_tokens + [cfg.vision_end_token_id] + after
        return torch.tensor([ids])

    def raw_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        out = {a: [] for a in AXES}
        merge = self.cfg.vision.merge_size**2
        for video, prompt in zip(videos, prompts):
            frames = sample_frames(video, self.cfg.source_fps, self.cfg.vision.fps)
            pixels, grid = prepare_pixels(frames, self.cfg.vision)
            ids = self._input_ids(prompt, int(grid.prod()) // merge).to(pixels.device)
            token_type = (ids == self.model.config.video_token_id).long() * 2  # 0 text, 2 video (M-RoPE)
            res = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels,
                             video_grid_thw=grid.to(pixels.device), mm_token_type_ids=token_type,
                             output_hidden_states=True)
            hidden = res.hidden_states[-1][0]  # (L, D)
            for a, tid in zip(AXES, self.special_ids):
                pos = (ids[0] == tid).nonzero()
                if len(pos) != 1:
                    raise ValueError(f"the prompt template must hold {SPECIAL_TOKENS[AXES.index(a)]} exactly once")
                out[a].append(self.rm_head(hidden[pos[0, 0]]).squeeze(-1))
        return {a: torch.stack(v) for a, v in out.items()}


@register_reward("videoreward")
def videoreward(weights: str = "", template_file: str = "", **_) -> VideoRewardModel:
    """VideoReward from a local checkpoint folder (``--weights PATH``)."""
    from genrl.errors import UsageError

    path = Path(weights)
    if not weights or not path.is_dir() or not (path / "config.json").exists():
        raise UsageError("videoreward needs --weights DIR: a local VideoReward checkpoint folder with config.json")
    from safetensors import safe_open
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    head = None
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            key = next((k for k in sf.keys() if k.endswith("rm_head.weight")), None)
            if key:
                w = sf.get_tensor(key).float()
                head = nn.Linear(w.shape[1], w.shape[0], bias=False)
                head.weight.data.copy_(w)
    if head is None:
        raise UsageError(f"{path}: no rm_head.weight in its safetensors files; is it a VideoReward checkpoint?")
    cfg = VideoRewardConfig(path=str(path), template_file=template_file)
    return VideoRewardModel(model.eval(), tokenizer, cfg, head).requires_grad_(False)
