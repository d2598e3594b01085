import math

import pytest
import torch

from rewards.base import build_reward
from rewards.corruptions import blocky, blur, freeze, jitter, reverse, teleport, wrong_attributes
from rewards.shapes import ShapesReward, ShapesRewardConfig
from rewards.training import bt_ties_loss, bt_ties_predict, make_pairs
from genrl.worlds.shapes import ShapesWorld

WORLD = ShapesWorld()


def test_bt_ties_loss_hand_computed():
    k = 5.0
    ra, rb = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])
    loss = bt_ties_loss(ra, rb, torch.tensor([1.0, -1.0, 0.0]), k)
    sig = lambda z: 1 / (1 + math.exp(-z))
    want0 = -math.log(sig(2.0 - math.log(5)))
    want1 = -math.log(sig(1.0 - math.log(5)))  # B wins by 1
    want2 = -2 * math.log(sig(-math.log(5))) - math.log(24)
    assert torch.allclose(loss, torch.tensor([want0, want1, want2]), atol=1e-6)
    # the three outcome probabilities of Rao-Kupper sum to one
    d = 0.7
    p_a, p_b = sig(d - math.log(k)), sig(-d - math.log(k))
    p_tie = math.exp(-float(bt_ties_loss(torch.tensor([d]), torch.tensor([0.0]), torch.tensor([0.0]), k)))
    assert math.isclose(p_a + p_b + p_tie, 1.0, rel_tol=1e-6)
    assert bt_ties_predict(torch.tensor([5.0, 0.0, 0.0]), torch.tensor([0.0, 5.0, 0.1])).tolist() == [1, -1, 0]


def _shift(moved: torch.Tensor, clean: torch.Tensor) -> tuple[int, int]:
    return next((dy, dx) for dy in range(-16, 16) for dx in range(-16, 16)
                if torch.equal(torch.roll(clean, (dy, dx), dims=(-2, -1)), moved))


def test_corruptions_hit_their_axis():
    v, caps, attrs = WORLD.clips("val", range(4))
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(blur(v, 2).mean(), v.mean(), atol=1e-3) and (blur(v, 3) - v).abs().max() > 0.3
    assert (blocky(v, 1) - v).abs().mean() > 0
    fr = freeze(v, 3)
    assert torch.equal(fr[:, 0], fr[:, -1])
    rv = reverse(v, 3)
    assert torch.equal(rv[:, -1], v[:, rv.shape[1] - 1 - 2 * (v.shape[1] // 2)])
    for sev, amp in ((1, 1), (2, 2), (3, 4)):  # every frame after the first moved by exactly amp
        j = jitter(v, sev, g)
        assert torch.equal(j[:, 0], v[:, 0])
        for f in range(1, v.shape[1]):
            dy, dx = _shift(j[:, f], v[:, f])
            assert max(abs(dy), abs(dx)) == amp
    for sev in (1, 2, 3):  # a teleport is a frame whose content is not the clean frame rolled like the one before
        t = teleport(v, sev, g)
        jumps = sum(not torch.equal(t[:, f], torch.roll(v[:, f], _shift(t[:, f - 1], v[:, f - 1]), dims=(-2, -1)))
                    for f in range(1, v.shape[1]))
        assert jumps == sev
    wrong = wrong_attributes(attrs, 2, g)
    assert ((wrong != attrs).sum(dim=1) == 2).all()


def test_pairs_have_labels_only_on_their_axis():
    b = make_pairs(WORLD, "train", 24, torch.Generator().manual_seed(1))
    for i, ax in enumerate(b.axis):
        for other in ("vq", "mq", "ta"):
            if other != ax:
                assert b.labels[other][i] == 0


def test_gradients_reach_pixels_and_are_finite():
    torch.manual_seed(0)
    m = ShapesReward(ShapesRewardConfig(width=8, dim=16))
    v, caps, _ = WORLD.clips("val", range(2))
    x = v.clone().requires_grad_(True)
    s = m(x, caps)
    for a in ("vq", "mq", "ta"):
        (g,) = torch.autograd.grad(s.raw[a].sum(), x, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    sal = m.saliency(v, caps)
    assert sal["ta"].shape == (2, 9, 32, 32) and (sal["ta"] >= 0).all()


def test_unknown_reward_backend_is_a_usage_error():
    from genrl.errors import UsageError

    with pytest.raises(UsageError, match="unknown reward model 'nope'; valid: "):
        build_reward("nope")
