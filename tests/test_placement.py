"""The trainer places every role a method declares; methods never move models."""

import torch

from distill.dmd import DMDConfig
from distill.stream_r1 import StreamR1Config, StreamR1Method
from genrl.methods.common import OptimConfig
from genrl.models.registry import save_weights
from genrl.models.video_model import StreamingConfig
from genrl.train.trainer import TrainConfig, place_roles
from genrl.worlds.shapes import ShapesWorld, WorldConfig
from rewards.shapes import ShapesReward, ShapesRewardConfig

from tiny import tiny_video_model


def _stream_r1(tmp_path):
    torch.manual_seed(0)
    rc = ShapesRewardConfig(width=8, dim=16)
    reward = save_weights(ShapesReward(rc), tmp_path / "reward.safetensors", "shapes_reward", rc)
    teacher = tiny_video_model(seed=0)
    student = teacher.streaming_copy(StreamingConfig(local_frames=6, sink_frames=3))
    return StreamR1Method(StreamR1Config(reward_weights=str(reward)), DMDConfig(batch_size=1), student, teacher,
                          ShapesWorld(WorldConfig(frames=6)), OptimConfig(), OptimConfig(), 0)


def test_every_role_of_stream_r1_reaches_the_device(tmp_path):
    method = _stream_r1(tmp_path)
    roles = method.roles()
    assert set(roles) == {"student", "critic", "teacher", "ema", "reward"}
    assert [n for n, r in roles.items() if r.trainable] == ["student", "critic"]
    assert [n for n, r in roles.items() if r.graph] == ["reward"]  # saliency: gradients to the pixels through it
    place_roles(roles, torch.device("meta"), TrainConfig())
    for name, module in (("teacher", method.teacher), ("reward", method.reward), ("critic", method.critic),
                         ("student", method.student), ("ema", method.ema.module)):
        assert {p.device.type for p in [*module.parameters(), *module.buffers()]} == {"meta"}, name


def test_frozen_roles_take_the_frozen_dtype_and_trainable_ones_stay_float32(tmp_path):
    method = _stream_r1(tmp_path)
    place_roles(method.roles(), torch.device("cpu"), TrainConfig(frozen_dtype="bfloat16"))
    assert {p.dtype for p in method.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in method.reward.parameters()} == {torch.bfloat16}
    for module in (method.student, method.critic, method.ema.module):  # the EMA is exported: it keeps float32
        assert {p.dtype for p in module.parameters()} == {torch.float32}
