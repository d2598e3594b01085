"""A trained video-language model as a dense, differentiable reward for another model (SOLE-R1's second half).

The shapes VLM (``shapes-vlm`` or any of its runs) was trained to describe a clip in its think block before it
answers: "<think> small red square left slowly </think>". This backend asks it the five attribute questions about
a video and reads, by teacher forcing, how likely it finds the prompt's own description — a log-probability per
attribute word, so every attribute of every video gets its own graded score, with gradients to the pixels
(attributes a prompt leaves open are not scored; an axis with none named scores the real clips' mean):

- ``ta`` = mean log p of the size, colour and kind words (what the prompt says the object is);
- ``mq`` = mean log p of the direction and speed words (how it says it moves).

No VQ axis: the one tried — log p of closing a count's description after one shape ("one coherent object and
nothing else") — ranked the shipped DMD student's val-split videos backwards against the attribute probe (AUC
0.38 on 256 videos, where MQ and TA together reach 0.76), so it was dropped.

Raw scores are z-normalised against real clips of the world (``calibration`` of them, train split), so 0 is what
a real clip scores on average. Videos are read at the VLM's frame count (the first frames) and size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import RewardModel, register_reward

_DESCRIBED = ("size", "colour", "shape", "direction", "speed")  # the order of a think block's words
_CHOICE = ("colour", "shape", "size", "direction", "speed")


class VLMReward(RewardModel):
    axes = ("mq", "ta")
    frames_read = "the first frames, as many as the VLM reads, at its size"

    def __init__(self, vlm, calibration: int = 256):
        super().__init__()
        self.vlm = vlm.eval().requires_grad_(False)
        if calibration:
            self.calibrate_on_world(calibration)

    @property
    def frames(self) -> int:
        return self.vlm.cfg.frames

    def read_indices(self, num_frames: int) -> list[int] | None:
        return list(range(min(num_frames, self.frames)))

    def unavailable(self, frames: torch.Tensor, prompt: str) -> dict[str, str]:
        if frames.shape[0] < self.frames:
            return {a: f"are shorter than the VLM's {self.frames} frames" for a in self.axes}
        return {}

    def _fit(self, videos: torch.Tensor) -> torch.Tensor:
        c = self.vlm.cfg
        if videos.shape[1] < c.frames:
            raise ValueError(f"the VLM reward reads {c.frames} frames; got videos of {videos.shape[1]}")
        v = videos[:, : c.frames]
        if v.shape[-2:] != (c.height, c.width):
            v = F.interpolate(v.flatten(0, 1), size=(c.height, c.width), mode="bilinear", align_corners=False,
                              antialias=True).unflatten(0, v.shape[:2])
        return v

    def raw_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        from genrl.models.vlm import pad_batch
        from genrl.worlds.prompting import parse_prompt
        from genrl.worlds.qa import QUESTIONS, QAItem
        from genrl.worlds.shapes import VALUES

        B, tok = videos.shape[0], self.vlm.tokenizer
        named = [parse_prompt(p).attributes for p in prompts]
        # an attribute the prompt leaves open is written as its first value and left out of the scores
        names = [{a: n[a] or VALUES[a][0] for a in _DESCRIBED} for n in named]
        said = torch.tensor([[n[a] is not None for a in _DESCRIBED] for n in named], dtype=torch.float)
        emb = self.vlm.encode_video(self._fit(videos))  # (B, V, D)
        questions = [QAItem(q, QUESTIONS[q], list(VALUES[q]), "", "").prompt() for q in _CHOICE]
        Q = len(questions)
        thinks = [f"<think> {' '.join(n[a] for a in _DESCRIBED)} </think>" for n in names for _ in range(Q)]
        p_ids, p_mask = pad_batch([tok.encode(q) for q in questions] * B, tok.pad_id, left_pad=True)
        ids, mask = pad_batch([tok.encode(c) for c in thinks], tok.pad_id, left_pad=False)
        dev = emb.device
        logp = self.vlm.token_logprobs(emb.repeat_interleave(Q, 0), p_ids.to(dev), p_mask.to(dev), ids.to(dev),
                                       mask.to(dev))
        words = logp[:, 1:6].unflatten(0, (B, Q)).mean(1)  # (B, 5): size colour kind direction speed
        said = said.to(dev)
        out = {}
        for axis, cols in (("ta", slice(0, 3)), ("mq", slice(3, 5))):
            n = said[:, cols].sum(1)
            mean = (words[:, cols] * said[:, cols]).sum(1) / n.clamp_min(1)
            # nothing of this axis named: the real clips' mean, so its z is 0
            out[axis] = torch.where(n > 0, mean, self.score_mean[self.axes.index(axis)].to(mean.dtype))
        return out

    def calibrate_on_world(self, n: int, seed: int = 0) -> None:
        """Set the z-normalisation from ``n`` real train-split clips (their captions as prompts)."""
        from genrl.worlds.shapes import ShapesWorld, WorldConfig

        c = self.vlm.cfg
        world = ShapesWorld(WorldConfig(height=c.height, width=c.width, frames=c.frames))
        videos, captions, _ = world.random_clips("train", n, torch.Generator().manual_seed(seed))
        self.calibrate(videos.to(self.score_mean.device), captions)


    @torch.no_grad()
    def calibrate_on_generator(self, generator, n: int, seed: int = 0) -> None:
        """Set the z-normalisation from ``n`` videos ``generator`` makes for train-split prompts: z then places a
        video among that generator's own (real clips sit far above them), the scale Stream-R1's exp(beta z) is set
        for when the generator is the student being distilled."""
        from genrl.generation import SamplingConfig, generate
        from genrl.worlds.shapes import ShapesWorld

        world = ShapesWorld()
        prompts = world.random_prompts("train", n, torch.Generator().manual_seed(seed))
        videos = torch.cat([generate(generator, prompts[lo : lo + 32], world.cfg.frames, SamplingConfig(),
                                     seed=seed + lo).videos for lo in range(0, n, 32)])
        self.calibrate(videos.to(self.score_mean.device), prompts)


@register_reward("vlm")
def vlm_reward(weights: str = "shapes-vlm", calibration: int = 256, calibrate_on: str = "", **_) -> VLMReward:
    """A genrl VLM (built-in name, .safetensors file or run folder) as a reward, z-normalised on ``calibration`` real
    clips, or on as many videos of the generator ``calibrate_on`` (built-in name or path) when given."""
    from genrl.models.registry import load_model

    reward = VLMReward(load_model(weights, "vlm"), 0 if calibrate_on else calibration)
    if calibrate_on:
        reward.calibrate_on_generator(load_model(calibrate_on, "video_model"), calibration)
    return reward
