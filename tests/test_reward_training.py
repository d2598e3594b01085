"""Reward-model training moves held-out pair accuracy the right way, and the wrong way with flipped labels."""

import math

import pytest
import torch

import rewards.training as T
from genrl.methods.common import OptimConfig
from genrl.train.trainer import StepContext, TrainConfig
from genrl.worlds.shapes import ShapesWorld, WorldConfig
from rewards.shapes import ShapesRewardConfig

from tiny import OneProcess


def _train(monkeypatch, flip: bool, steps: int = 50) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), batch_size=16, tie_prob=0.0,
                               axis_probs=[1.0, 0.0, 0.0], attribute_loss=0.0)
    method = T.RewardMethod(cfg, OptimConfig(lr=3e-3, warmup_steps=0), ShapesWorld(WorldConfig(frames=4)), 0)
    if flip:  # the worse clip wins
        loss = T.bt_ties_loss
        monkeypatch.setattr(T, "bt_ties_loss", lambda a, b, label, k=5.0: loss(a, b, -label, k))
    ctx = StepContext(OneProcess(), TrainConfig(grad_clip=1.0))
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


# ------------------------------------------------------------------ where mutants survived
def _p(d, k=5.0):
    import math as m

    s = lambda v: 1 / (1 + m.exp(-v))
    pa, pb = s(d - m.log(k)), s(-d - m.log(k))
    return pa, pb, 1 - pa - pb


def test_tie_model_predictions_and_loss_by_hand_at_the_default_k():
    d = torch.arange(-40, 41, dtype=torch.float64) / 10  # -4 .. 4 by 0.1
    r_b = torch.full_like(d, 0.7)
    pred = T.bt_ties_predict(d + r_b, r_b)
    want = []
    for v in d.tolist():
        pa, pb, pt = _p(v)
        want.append(max(((pb, -1), (pt, 0), (pa, 1)))[1])
    assert pred.tolist() == want and set(want) == {-1, 0, 1}
    label = torch.tensor([1.0, -1.0, 0.0]).repeat(27)[: len(d)]
    loss = T.bt_ties_loss(d + r_b, r_b, label)
    for v, lab, got in zip(d.tolist(), label.tolist(), loss.tolist()):
        pa, pb, pt = _p(v)
        assert got == pytest.approx(-math.log({1.0: pa, -1.0: pb, 0.0: pt}[lab]), rel=1e-6)


def test_ties_come_at_the_asked_rate_and_each_axis_corrupts_its_own_way():
    from rewards.corruptions import mq_corrupt, ta_corrupt, vq_corrupt
    from rewards.training import MQ_KINDS, VQ_KINDS

    world = ShapesWorld(WorldConfig(frames=4))
    b = T.make_pairs(world, "train", 400, torch.Generator().manual_seed(0), tie_prob=0.5, axis_probs=(1.0, 0.0, 0.0))
    ties = float((b.labels["vq"] == 0).float().mean())  # ties asked for half the pairs, plus 1 in 4 by chance
    assert ties == pytest.approx(0.5 + 0.5 * 0.25, abs=0.06)
    attrs, starts = world.random_attributes("train", 1, torch.Generator().manual_seed(1))
    clean = world.render(attrs, starts)
    for axis, fn in (("ta", None), ("vq", vq_corrupt), ("mq", mq_corrupt)):
        g = torch.Generator().manual_seed(2)
        got = T._corrupt_pair(world, clean, attrs, starts, axis, 2, 0, g)
        g = torch.Generator().manual_seed(2)
        if axis == "ta":
            want = ta_corrupt(world, attrs, starts, 2, g), ta_corrupt(world, attrs, starts, 0, g)
        else:
            kinds = VQ_KINDS if axis == "vq" else MQ_KINDS
            kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
            want = fn(clean, kind, 2, g), fn(clean, kind, 0, g)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), axis


def test_a_reward_step_draws_pairs_with_the_configured_axes_and_steps_the_schedule(monkeypatch):
    torch.manual_seed(0)
    cfg = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), batch_size=4, axis_probs=[0.0, 0.0, 1.0])
    method = T.RewardMethod(cfg, OptimConfig(lr=1e-3, warmup_steps=4), ShapesWorld(WorldConfig(frames=4)), 0)
    seen = []
    make = T.make_pairs
    monkeypatch.setattr(T, "make_pairs", lambda *a: (seen.append(a), make(*a))[1])
    lrs = []
    for step in range(3):
        method.train_step(step, StepContext(OneProcess(), TrainConfig()))
        lrs.append(method.opt.param_groups[0]["lr"])
    assert all(a[5] == (0.0, 0.0, 1.0) and a[4] == cfg.tie_prob for a in seen)
    assert lrs == pytest.approx([1e-3 * 2 / 4, 1e-3 * 3 / 4, 1e-3])  # warm-up stepped once per step


def test_tie_model_predictions_keep_the_shape_of_their_inputs():
    r_a = torch.tensor([[3.0, 0.0, -3.0], [0.2, 5.0, 0.0]])
    r_b = torch.zeros(2, 3)
    assert T.bt_ties_predict(r_a, r_b).tolist() == [[1, 0, -1], [0, 1, 0]]
