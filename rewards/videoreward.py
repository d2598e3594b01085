"""VideoReward (VideoAlign): a Qwen2-VL-2B reward model reading VQ / MQ / TA at three special tokens.

Loads a folder written by ``genrl convert videoreward`` (from VideoAlign's
release: LoRA merged, wrapper prefixes gone, every tensor accounted for; see
:mod:`rewards.videoalign`) and scores the way VideoAlign's inference does:

- the prompt is the chat template of the model's tokenizer (its default system turn
  included) around the video and the trained template (``detailed_special``);
- positions are sequential (0, 1, 2, ... on all three rotary sections), as VideoAlign's
  trainer ran the decoder with ``position_ids=None``, not Qwen2-VL's 3-D M-RoPE;
- frames: 2 a second of the source's real frame rate (at least 4, an even count), resized
  with ``smart_resize`` within 448x448 and rounded to 8 bits (:mod:`genrl.models.qwen_vision`);
- the head reads the last hidden state at the three special tokens; a 3-output head is
  reduced to its diagonal (token m reads output m); scores are normalised with the
  release's mean/std.

"overall" is the mean of the three normalised axes, as for every genrl backend;
VideoAlign's inference reports their sum (3x genrl's overall).

Departure, for gradients: files are read and resized exactly as VideoAlign does (uint8
frames); tensors (Stream-R1 rollouts) are resized in float and rounded to 8 bits with a
straight-through gradient, and saliency is spread from the frames read to every frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from genrl.models.qwen_vision import VisionPrepConfig, frame_indices, patchify, resize_frames, target_size

from .base import AXES, RewardModel, register_reward

SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
SETTINGS_FILE = "genrl_videoreward.json"


@dataclass
class VideoRewardConfig:
    """How a converted VideoReward folder scores (written by `genrl convert videoreward`)."""

    prompt_template: str = ""
    """The trained prompt with {text_prompt} and the three special tokens."""
    output_dim: int = 1
    """Outputs of the reward head (3: one per axis, read on the diagonal)."""
    mean: dict = field(default_factory=lambda: {a: 0.0 for a in AXES})
    """Per-axis mean of raw scores (the release's inference_config)."""
    std: dict = field(default_factory=lambda: {a: 1.0 for a in AXES})
    """Per-axis std of raw scores."""
    positions: str = "sequential"
    """'sequential' (how VideoAlign was trained) or 'mrope' (Qwen2-VL's 3-D positions)."""
    source_fps: float = 16.0
    """Frame rate of videos handed over as tensors (Wan2.1 generates 16 fps)."""
    vision: VisionPrepConfig = field(default_factory=lambda: VisionPrepConfig(max_pixels=448 * 448))


class VideoRewardModel(RewardModel):
    frames_read = "2 frames a second of the source (at least 4), resized within 448x448, 8-bit rounded"

    def __init__(self, model: nn.Module, tokenizer, cfg: VideoRewardConfig, rm_head: nn.Linear):
        super().__init__()
        if "{text_prompt}" not in cfg.prompt_template or any(t not in cfg.prompt_template for t in SPECIAL_TOKENS):
            raise ValueError("the prompt template must hold {text_prompt} and the three reward tokens")
        self.model, self.tokenizer, self.cfg, self.rm_head = model, tokenizer, cfg, rm_head
        self.special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        for i, a in enumerate(AXES):
            self.score_mean[i], self.score_std[i] = cfg.mean[a], cfg.std[a]

    def enable_activation_checkpointing(self) -> None:
        """Keep only each vision block's and decoder layer's input when scores are taken with gradients to the
        pixels (Stream-R1's saliency under ``train.activation_checkpointing``), and run the block again in
        backward; the same scores and gradients. PyTorch's non-reentrant checkpoint wrapper, which works on
        this frozen model in eval mode (transformers' own checkpointing runs only in training mode)."""
        from functools import partial

        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                                 apply_activation_checkpointing,
                                                                                 checkpoint_wrapper)

        from genrl.models.hf_vlm import language_model_of, vision_tower_of

        targets = {id(m) for m in (*vision_tower_of(self.model).blocks, *language_model_of(self.model).layers)}
        apply_activation_checkpointing(self.model, partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
                                       check_fn=lambda m: id(m) in targets)

    # --------------------------------------------------------------- frames
    def read_indices(self, num_frames: int, fps: float | None = None) -> list[int]:
        return frame_indices(num_frames, fps or self.cfg.source_fps, self.cfg.vision)

    def prompt_ids(self, prompt: str, video_tokens: int) -> torch.Tensor:
        """The tokenizer's chat template around the video and the trained prompt, video pads expanded."""
        messages = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": self.cfg.prompt_template.format(text_prompt=prompt)}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pad = "<|video_pad|>"
        if text.count(pad) != 1:
            raise ValueError("the tokenizer's chat template must place one <|video_pad|> for a video")
        text = text.replace(pad, pad * video_tokens)
        return torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])

    # --------------------------------------------------------------- scoring
    def score_frames(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        """Raw (VQ, MQ, TA) of the frames read, (F, 3, h, w) in [0, 1] at the model's size -> (3,)."""
        pixels, grid = patchify(frames, self.cfg.vision)
        merge = self.cfg.vision.merge_size**2
        ids = self.prompt_ids(prompt, int(grid.prod()) // merge).to(frames.device)
        inner = self.model.model
        kwargs = {}
        if self.cfg.positions == "sequential":
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1).expand(3, 1, -1)
        else:
            kwargs["mm_token_type_ids"] = (ids == self.model.config.video_token_id).long() * 2
        out = inner(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels.to(self.rm_head.weight.dtype),
                    video_grid_thw=grid.to(ids.device), **kwargs)
        hidden = out.last_hidden_state[0]
        pos = [(ids[0] == t).nonzero() for t in self.special_ids]
        if any(len(p) != 1 for p in pos):
            raise ValueError("each reward token must appear exactly once in the prompt")
        logits = self.rm_head(hidden[torch.cat(pos)[:, 0]]).float()  # (3, output_dim)
        return logits.diagonal() if self.cfg.output_dim == 3 else logits[:, 0]

    def raw_scores(self, videos: torch.Tensor, prompts: list[str], fps: float | None = None) -> dict[str, torch.Tensor]:
        out = []
        for video, prompt in zip(videos, prompts):
            frames = video[self.read_indices(video.shape[0], fps)]
            frames = resize_frames(frames, target_size(*frames.shape[-2:], self.cfg.vision))
            out.append(self.score_frames(frames, prompt))
        scores = torch.stack(out)
        return {a: scores[:, i] for i, a in enumerate(AXES)}

    def read_file(self, path) -> torch.Tensor:
        """The frames VideoAlign reads from a video file, exactly: its real fps, uint8 bicubic resize."""
        from genrl.io.video import read_frames, video_info

        total, fps = video_info(path)
        idx = self.read_indices(total, fps)
        frames = read_frames(path, idx)  # (F, 3, H, W) uint8, only these frames decoded into memory
        return _resize_uint8(frames, target_size(*frames.shape[-2:], self.cfg.vision)).float() / 255


    def score_read(self, frames: torch.Tensor, prompt: str):
        raw = self.score_frames(frames, prompt)
        return self.normalise({a: raw[i : i + 1] for i, a in enumerate(AXES)})


def _resize_uint8(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    return resize(frames, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)


def load_settings(path: Path) -> VideoRewardConfig:
    from omegaconf import OmegaConf

    data = json.loads((path / SETTINGS_FILE).read_text())
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(VideoRewardConfig), data))


@register_reward("videoreward")
def videoreward(weights: str = "", dtype: str = "auto", **_) -> VideoRewardModel:
    """VideoReward from a folder written by `genrl convert videoreward` (``--weights DIR``)."""
    from genrl.errors import UsageError

    from .videoalign import load_converted

    path = Path(weights) if weights else None
    if path is None or not path.is_dir():
        raise UsageError("videoreward needs --weights DIR: a folder written by `genrl convert videoreward`")
    if (path / "model_config.json").is_file() and not (path / SETTINGS_FILE).is_file():
        raise UsageError(f"{path}: a VideoAlign release folder; convert it once with "
                         f"`genrl convert videoreward {path} DST --base QWEN2VL_DIR --videoalign-src VIDEOALIGN_DIR`")
    if not (path / SETTINGS_FILE).is_file():
        raise UsageError(f"{path}: no {SETTINGS_FILE}; was it written by `genrl convert videoreward`?")
    torch_dtype = (torch.bfloat16 if torch.cuda.is_available() else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    model, tokenizer, head = load_converted(path, torch_dtype)
    return VideoRewardModel(model.eval(), tokenizer, load_settings(path), head).requires_grad_(False)
