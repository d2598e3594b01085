"""Reward-model training moves held-out pair accuracy the right way, and the wrong way with flipped labels."""

import torch

import rewards.training as T
from genrl.methods.common import OptimConfig
from genrl.train.trainer import StepContext, TrainConfig
from genrl.worlds.shapes import ShapesWorld, WorldConfig
from rewards.shapes import ShapesRewardConfig

from test_nonfinite import _Acc


def _train(monkeypatch, flip: bool, steps: int = 50) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), batch_size=16, tie_prob=0.0,
                               axis_probs=[1.0, 0.0, 0.0], attribute_loss=0.0)
    method = T.RewardMethod(cfg, OptimConfig(lr=3e-3, warmup_steps=0), ShapesWorld(WorldConfig(frames=4)), 0)
    if flip:  # the worse clip wins
        loss = T.bt_ties_loss
        monkeypatch.setattr(T, "bt_ties_loss", lambda a, b, label, k=5.0: loss(a, b, -label, k))
    ctx = StepContext(_Acc(), TrainConfig(grad_clip=1.0))
    before = T.pair_accuracy(method.model, method.world, 128)["vq_accuracy"]
    for step in range(steps):
        method.train_step(step, ctx)
    return before, T.pair_accuracy(method.model, method.world, 128)["vq_accuracy"]


def test_training_raises_pair_accuracy_and_flipped_labels_lower_it(monkeypatch):
    before, after = _train(monkeypatch, flip=False)
    assert after > before + 0.1 and after > 0.85
    before_f, after_f = _train(monkeypatch, flip=True)
    assert before_f == before and after_f < before - 0.2
