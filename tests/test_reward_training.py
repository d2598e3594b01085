"""Reward-model training moves held-out pair accuracy the right way, and the wrong way with flipped labels."""

import math

import pytest
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


class _Capture:
    """A StepContext that records the micro-batch loss instead of stepping."""

    def optimize(self, opt, params, micro, scheduler=None):
        self.loss = micro(0)
        return {}


def test_the_reward_loss_is_the_mean_over_pairs_of_each_pairs_own_axis_loss_plus_attribute_ce():
    torch.manual_seed(0)
    cfg = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), batch_size=12, tie_prob=0.3,
                               axis_probs=[0.2, 0.4, 0.4], attribute_loss=0.7, k=4.0)
    method = T.RewardMethod(cfg, OptimConfig(lr=1e-3), ShapesWorld(WorldConfig(frames=4)), 0)
    g = method.data.generator
    state = g.get_state()
    ctx = _Capture()
    method.train_step(1, ctx)
    g.set_state(state)
    b = T.make_pairs(method.world, "train", 12, g, 0.3, (0.2, 0.4, 0.4))
    assert len(set(b.axis)) == 3 and max(b.axis.count(a) for a in T.AXES) >= 2  # every axis, some twice
    assert any(float(b.labels[a][i]) == 0 for i, a in enumerate(b.axis))  # a tie among them
    with torch.no_grad():
        ra, rb = method.model.raw_scores(b.a, b.prompts), method.model.raw_scores(b.b, b.prompts)
        pair = []
        for i, a in enumerate(b.axis):  # each pair on its own axis, one at a time
            d, lab, lnk = float(ra[a][i] - rb[a][i]), float(b.labels[a][i]), math.log(4.0)
            if lab == 0:
                pair.append(-math.log(1 / (1 + math.exp(-(d - lnk)))) - math.log(1 / (1 + math.exp(d + lnk)))
                            - math.log(4.0 * 4.0 - 1))
            else:
                pair.append(-math.log(1 / (1 + math.exp(-(d * lab - lnk)))))
        logp = method.model.attribute_logprobs(method.model.video_features(b.clean))
        ce = sum(-float(lp[j, int(b.attrs[j, i])]) for i, lp in enumerate(logp) for j in range(12)) / (12 * len(logp))
    assert float(ctx.loss.detach()) == pytest.approx(sum(pair) / 12 + 0.7 * ce, rel=1e-5)
