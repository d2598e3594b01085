"""Reward backends by name: shapes (embedded default), clip, videoreward."""

from __future__ import annotations

from genrl.models.registry import BUILTIN, load_model, register_kind

from .base import register_reward
from .shapes import ShapesReward, ShapesRewardConfig

register_kind("shapes_reward", ShapesRewardConfig, ShapesReward)
BUILTIN.setdefault("shapes-reward", "shapes-reward.safetensors")
# the same recipe trained on another seed: a reward model *not* used in training, to catch reward hacking
BUILTIN.setdefault("shapes-reward-b", "shapes-reward-b.safetensors")
# shapes-reward fine-tuned on the students' own clips graded by the probe (configs/reward_student_clips.yaml)
BUILTIN.setdefault("shapes-reward-student", "shapes-reward-student.safetensors")


@register_reward("shapes")
def shapes_reward(weights: str = "shapes-reward", **_) -> ShapesReward:
    """The embedded shapes reward model (name or path of its weights)."""
    return load_model(weights, kind="shapes_reward").requires_grad_(False)

from . import clip, videoreward, vlm  # noqa: E402,F401 - register the other backends
