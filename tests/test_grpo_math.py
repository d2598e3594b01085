import math

import pytest
import torch

from genrl.grpo import aggregate, clipped_token_loss, group_advantages, grpo_loss, k3_kl, tw_token_weights


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    a = group_advantages(r, 2, "group", eps=0.0)
    s = math.sqrt(0.5)  # sample std of (1, 0)
    assert torch.allclose(a[:4], torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]))
    assert torch.equal(group_advantages(r, 2, "group")[4:], torch.zeros(2))  # a group that agrees learns nothing
    assert torch.allclose(group_advantages(r, 2, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))
    b = group_advantages(r, 2, "batch", eps=0.0)
    assert torch.allclose(b, group_advantages(r, 2, "none") / r.std())
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        group_advantages(r, 2, "z")


def test_k3_and_clipping():
    logp, ref = torch.tensor([[0.0, -1.0]]), torch.tensor([[0.0, 0.0]])
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([[0.0, math.e - 1 - 1]]))
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    pos = clipped_token_loss(new, old, torch.tensor([2.0]), 0.2, 0.28)
    assert torch.allclose(pos, -torch.tensor([[1.28 * 2, 0.5 * 2, 1.1 * 2]]))
    neg = clipped_token_loss(new, old, torch.tensor([-1.0]), 0.2, 0.28)
    assert torch.allclose(neg, torch.tensor([[1.5, 0.8, 1.1]]))


def test_aggregations():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert torch.isclose(aggregate(loss, mask, "grpo"), torch.tensor((2.0 + 4.0) / 2))
    assert torch.isclose(aggregate(loss, mask, "bnpo"), torch.tensor(10.0 / 4))
    assert torch.isclose(aggregate(loss, mask, "dr_grpo", max_len=5), torch.tensor(10.0 / 10))
    assert torch.isclose(aggregate(loss, mask, "dapo"), torch.tensor(10.0 / 4))


def test_tw_weights_and_full_loss():
    kl = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    w = tw_token_weights(kl, mask, alpha=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 1 + 1 / 3, 2.0], [1.0, 1.0, 1.0]]))
    logp = torch.zeros(2, 3, requires_grad=True)
    loss = grpo_loss(logp, torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask, beta=0.1)
    assert torch.isclose(loss, torch.tensor(0.0))  # ratio 1, kl 0, advantages cancel
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [0.25, 0.25, 0.0]]))
