"""Hand-computed values on fixtures that can see shape mistakes: B >= 2, F >= 2 with unequal frames,
odd history lengths, G >= 3, non-zero KL, asymmetric clipping."""

import math

import pytest
import torch

from distill.dmd import dmd_gradient, dmd_loss
from distill.stream_r1 import StreamR1Config, StreamR1Method, balance_penalty
from genrl.grpo import grpo_loss
from genrl.train.ema import EMA


def test_dmd_normaliser_is_per_sample_over_all_frames():
    # B = 2, F = 2 frames that differ: a per-frame normaliser would give other values
    x = torch.tensor([[1.0, 3.0], [0.0, 2.0]]).reshape(2, 2, 1, 1, 1)
    x_real = torch.zeros(2, 2, 1, 1, 1)
    x_fake = torch.tensor([[2.0, 2.0], [1.0, -1.0]]).reshape(2, 2, 1, 1, 1)
    g = dmd_gradient(x, x_real, x_fake).flatten(1)
    # sample 0: mean |x - x_real| over both frames = 2; sample 1: 1
    assert torch.allclose(g, torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    # the loss averages every element of every rollout, each rollout weighted
    xg = x.clone().requires_grad_()
    dmd_loss(xg, g.view_as(x), rollout_weights=torch.tensor([3.0, 1.0])).backward()
    assert torch.allclose(xg.grad.flatten(1), torch.tensor([[3.0, 3.0], [1.0, -1.0]]) / 4)  # w * g / (B * numel)


def test_ema_moves_a_tenth_of_the_way_at_decay_point_nine():
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(10.0)
    ema.update(m)
    assert float(ema.module.weight) == pytest.approx(1.0)  # 0.9 * 0 + 0.1 * 10
    ema.update(m)
    assert float(ema.module.weight) == pytest.approx(1.9)


def test_grpo_loss_with_kl_and_asymmetric_clipping_hand_computed():
    # G = 3 rollouts, unequal lengths, logp != old != ref
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.0, 1.0], [0.7, 1.0]]))
    old = torch.zeros(3, 2)
    ref = torch.log(torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]))
    adv = torch.tensor([1.0, -1.0, 2.0])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    beta, lo, hi = 0.1, 0.2, 0.28
    loss = grpo_loss(logp, old, ref, adv, mask, beta=beta, eps_low=lo, eps_high=hi)
    by_hand = []
    for i in range(3):
        n = int(mask[i].sum())
        terms = []
        for t in range(n):
            rho = math.exp(float(logp[i, t] - old[i, t]))
            a = float(adv[i])
            pg = -min(rho * a, min(max(rho, 1 - lo), 1 + hi) * a)
            d = float(ref[i, t] - logp[i, t])
            terms.append(pg + beta * (math.exp(d) - d - 1))  # k3 = e^(ref - logp) - (ref - logp) - 1 >= 0
        by_hand.append(sum(terms) / n)
    assert float(loss) == pytest.approx(sum(by_hand) / 3, rel=1e-6)


class _Reward(torch.nn.Module):
    """Scores set by hand: z (B, 3) per call; saliency 1 everywhere."""

    def __init__(self, zs):
        super().__init__()
        self.zs = list(zs)

    def scores_and_saliency(self, pixels, prompts, axes):
        from rewards.base import RewardScores

        z = self.zs.pop(0)
        scores = {a: z[:, i] for i, a in enumerate(axes)}
        return RewardScores(scores, scores), {a: torch.ones(pixels.shape[0], pixels.shape[1], *pixels.shape[-2:]) for a in axes}


def _method(zs, **cfg):
    m = StreamR1Method.__new__(StreamR1Method)
    from collections import deque

    m.sr1 = StreamR1Config(**cfg)
    m.reward = _Reward(zs)
    m.history = deque(maxlen=m.sr1.window)
    m.world = None  # no shapes world: no object-share metric
    m.student = type("S", (), {"decode": staticmethod(lambda x: x[:, :, :3])})()
    return m


def test_stream_r1_weights_as_a_whole_hand_computed():
    # three steps, odd history lengths: r uses the history *before* this step's reward is added
    z = [torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]),
         torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]),
         torch.tensor([[0.5, 0.5, 0.5], [3.0, 3.0, 3.0]])]
    m = _method(z, beta=1.0, lam=0.5, window=10, balance_warmup=2, max_weight=5.0, intra=True)
    x = torch.zeros(2, 3, 4, 2, 2)
    out = [m.loss_weights(x, ["p", "q"]) for _ in range(3)]
    # step 1: no history -> r = mean z = (0, 0) -> weights (1, 1)
    assert torch.allclose(out[0][1], torch.ones(2))
    # step 2: a history of 1 step (< warm-up 2): r = (2, 0) -> (e^2, 1), and e^2 = 7.39 is clamped to max_weight
    assert torch.allclose(out[1][1], torch.tensor([5.0, 1.0]))
    # step 3: a history of 2 steps: delta = step 2's mean z minus step 1's, per axis
    h = torch.tensor([[0.5, 0.0, -0.5], [1.0, 1.0, 1.0]])
    pen = float(balance_penalty(h, 2))
    assert pen == pytest.approx(float(torch.tensor([0.5, 1.0, 1.5]).std(unbiased=False)))
    want = torch.exp(torch.tensor([0.5, 3.0]) - 0.5 * pen).clamp_max(5.0)
    assert torch.allclose(out[2][1], want)
    # saliency 1 everywhere: W = 1 (floors and normalisations keep a flat map flat)
    assert torch.allclose(out[2][0], torch.ones_like(out[2][0]))


def test_balance_penalty_with_an_odd_history_compares_equal_halves():
    h = torch.tensor([[0.0, 0.0], [9.0, 9.0], [1.0, 3.0]])  # middle row left out of both halves
    assert float(balance_penalty(h, 2)) == pytest.approx(float(torch.tensor([1.0, 3.0]).std(unbiased=False)))
