import math

import torch

from distill.dmd import dmd_loss
from distill.stream_r1 import (
    balance_penalty,
    combined_reward,
    element_weights,
    fuse_saliency,
    rollout_weights,
    spatial_weights,
    temporal_weights,
)


def test_balance_penalty_and_combined_reward_hand_computed():
    # axis 0 improves by 1, axis 1 by 0, axis 2 by -1 between the halves
    hist = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    pen = balance_penalty(hist)
    assert math.isclose(float(pen), math.sqrt(2 / 3), rel_tol=1e-6)  # population std of (1, 0, -1)
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -3.0]])
    r = combined_reward(z, hist, lam=0.5)
    assert torch.allclose(r, torch.tensor([2.0, -1.0]) - 0.5 * math.sqrt(2 / 3))
    assert float(balance_penalty(hist[:1])) == 0.0
    # balanced improvement costs nothing
    assert float(balance_penalty(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))) == 0.0
    assert torch.allclose(rollout_weights(torch.tensor([0.0, 1.0]), 2.0), torch.tensor([1.0, math.e**2]))


def test_fusion_gives_weaker_axes_more_weight():
    sal = torch.zeros(1, 2, 1, 2, 2)
    sal[0, 0] = 1.0  # axis 0 saliency everywhere 1
    sal[0, 1] = 3.0
    z = torch.tensor([[0.0, math.log(3.0)]])  # T = 1: weights softmax(-z) = (3/4, 1/4)
    S = fuse_saliency(sal, z, 1.0)
    assert torch.allclose(S, torch.full((1, 1, 2, 2), 0.75 * 1 + 0.25 * 3))


def test_temporal_weights_floor_and_mean():
    S = torch.zeros(1, 3, 2, 2)
    S[0, 0], S[0, 1], S[0, 2] = 0.0, 1.0, 2.0  # per-frame means 0, 1, 2 -> minmax 0, .5, 1
    t = temporal_weights(S, tau_min=0.2)
    p = torch.tensor([0.2, 0.5, 1.0])
    assert torch.allclose(t[0], p / p.mean())


def test_spatial_weights_floor_and_per_frame_mean():
    S = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # one frame: minmax -> 0, .25, .5, 1
    s = spatial_weights(S, sigma_min=0.15)
    q = torch.tensor([0.15, 0.25, 0.5, 1.0])
    assert torch.allclose(s.flatten(), q / q.mean())
    flat = spatial_weights(torch.ones(1, 2, 3, 3), 0.15)  # no contrast: uniform weights
    assert torch.allclose(flat, torch.ones_like(flat))


def test_element_weights_have_mean_one_and_follow_saliency():
    g = torch.Generator().manual_seed(0)
    S = torch.rand(2, 3, 4, 4, generator=g)
    W, t = element_weights(S, 0.2, 0.15)
    assert torch.allclose(W.mean(dim=(1, 2, 3)), torch.ones(2))
    i = S[0].flatten().argmax()
    j = S[0].flatten().argmin()
    assert W[0].flatten()[i] > W[0].flatten()[j]


def test_beta_zero_and_unit_weights_reduce_to_plain_dmd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 4, 2, 2, generator=g).requires_grad_(True)
    grad = torch.randn(3, 2, 4, 2, 2, generator=g)
    plain = dmd_loss(x, grad)
    (gp,) = torch.autograd.grad(plain, x)
    r = torch.tensor([0.5, -2.0, 3.0])
    weighted = dmd_loss(x, grad, torch.ones(3, 2, 1, 2, 2), rollout_weights(r, 0.0))
    (gw,) = torch.autograd.grad(weighted, x)
    assert torch.equal(plain, weighted) and torch.equal(gp, gw)


def test_saliency_reaches_the_latent_grid_of_a_causal_video_vae():
    from distill.stream_r1 import saliency_to_latent

    # 9 pixel frames -> 3 latent frames (Wan2.1): frame 0 alone, then groups of 4; 2x2 pixel cells
    S = torch.arange(9.0).view(1, 9, 1, 1).expand(1, 9, 4, 4).clone()
    S[:, :, :2, :2] += 100.0
    out = saliency_to_latent(S, 3, (2, 2))
    assert out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, :, 1, 1], torch.tensor([0.0, 2.5, 6.5]))  # means of (0), (1..4), (5..8)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([100.0, 102.5, 106.5]))
    # equal frame counts: space only
    assert torch.equal(saliency_to_latent(S, 9, (4, 4)), S)
