import math

import pytest

import torch

from distill.dmd import dmd_loss
from distill.stream_r1 import (
    balance_penalty,
    combined_reward,
    element_weights,
    fuse_saliency,
    object_saliency_share,
    rollout_weights,
    spatial_weights,
    temporal_weights,
)


def test_balance_penalty_and_combined_reward_hand_computed():
    # axis 0 improves by 1, axis 1 by 0, axis 2 by -1 between the halves
    hist = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    pen = balance_penalty(hist, 2)
    assert math.isclose(float(pen), math.sqrt(2 / 3), rel_tol=1e-6)  # population std of (1, 0, -1)
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -3.0]])
    r = combined_reward(z, hist, lam=0.5, warmup=2)
    assert torch.allclose(r, torch.tensor([2.0, -1.0]) - 0.5 * math.sqrt(2 / 3))
    assert float(balance_penalty(hist[:1], 2)) == 0.0
    # balanced improvement costs nothing
    assert float(balance_penalty(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), 2)) == 0.0
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


# ---------------------------------------------------------------- B >= 2, independent references
def test_minmax_is_per_row_with_constant_rows_at_one():
    from distill.stream_r1 import _minmax

    x = torch.tensor([[1.0, 1.5, 1.25], [5.0, 6.0, 5.5], [2.0, 2.0, 2.0]])  # ranges 0.5 and 1, and none
    want = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    assert torch.allclose(_minmax(x, (1,)), want)


def _loops_temporal(S, tau):
    out = []
    for b in range(S.shape[0]):
        m = [float(S[b, f].mean()) for f in range(S.shape[1])]
        lo, hi = min(m), max(m)
        p = [max((v - lo) / (hi - lo) if hi > lo else 1.0, tau) for v in m]
        out.append([v / (sum(p) / len(p)) for v in p])
    return torch.tensor(out)


def _loops_spatial(S, sigma):
    out = torch.empty_like(S)
    for b in range(S.shape[0]):
        for f in range(S.shape[1]):
            v = S[b, f].flatten().tolist()
            lo, hi = min(v), max(v)
            q = [max((x - lo) / (hi - lo) if hi > lo else 1.0, sigma) for x in v]
            mean = sum(q) / len(q)
            out[b, f] = torch.tensor([x / mean for x in q]).view(S.shape[2:])
    return out


def test_temporal_spatial_and_element_weights_match_loops_per_rollout_and_frame():
    g = torch.Generator().manual_seed(3)
    S = torch.rand(3, 4, 2, 3, generator=g) * torch.tensor([1.0, 5.0, 0.3])[:, None, None, None]  # unequal rollouts
    S[2, 1] = 0.7  # a frame without contrast
    t = temporal_weights(S, 0.2)
    assert torch.allclose(t, _loops_temporal(S, 0.2), atol=1e-6)
    s = spatial_weights(S, 0.15)
    assert torch.allclose(s, _loops_spatial(S, 0.15), atol=1e-6)
    W, t2 = element_weights(S, 0.2, 0.15)
    raw = t[:, :, None, None] * s
    for b in range(3):  # each rollout's weights have mean 1 on their own
        assert torch.allclose(W[b], raw[b] / raw[b].mean(), atol=1e-6)
    assert torch.equal(t2, t)


def test_fusion_at_a_temperature_other_than_one():
    g = torch.Generator().manual_seed(4)
    sal = torch.rand(2, 3, 2, 2, 2, generator=g)
    z = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]])
    S = fuse_saliency(sal, z, 0.5)
    for b in range(2):
        e = [math.exp(-float(v) / 0.5) for v in z[b]]
        w = [v / sum(e) for v in e]
        assert torch.allclose(S[b], sum(w[m] * sal[b, m] for m in range(3)), atol=1e-6)


class _FixedReward(torch.nn.Module):
    """z per prompt from a table; saliency = the pixels' red channel, so the maps differ by frame and rollout."""

    axes = ("vq", "mq", "ta")

    def __init__(self, table):
        super().__init__()
        self.table = table

    def _scores(self, prompts):
        from rewards.base import RewardScores

        z = {a: torch.tensor([self.table[p][i] for p in prompts]) for i, a in enumerate(self.axes)}
        return RewardScores(z, z)

    def forward(self, pixels, prompts):
        assert pixels.ndim == 5 and len(prompts) == pixels.shape[0]
        return self._scores(prompts)

    def scores_and_saliency(self, pixels, prompts, axes):
        assert pixels.ndim == 5 and len(prompts) == pixels.shape[0]
        return self._scores(prompts), {a: pixels[:, :, 0].abs() * (i + 1) for i, a in enumerate(axes)}


def _method(tmp_path, **kw):
    from test_method_steps import _stream_r1

    return _stream_r1(tmp_path, **kw)


def test_loss_weights_without_saliency_use_the_reward_call_and_report_the_rollout_weights(tmp_path):
    m = _method(tmp_path, intra=False, beta=2.0, lam=0.0, max_weight=1.0)
    table = {"p0": [0.0, 0.0, 0.0], "p1": [1.0, 0.5, -0.3], "p2": [-0.9, -0.3, 0.0]}
    m.reward = _FixedReward(table)
    x = torch.randn(3, 6, *m.student.latent_shape(1, 6)[2:], generator=torch.Generator().manual_seed(0))
    W, rw, metrics = m.loss_weights(x, ["p0", "p1", "p2"])
    r = torch.tensor([0.0, 0.4, -0.4])  # mean z per rollout
    raw = torch.exp(2.0 * r)  # exp(0) == 1.0 exactly: at max_weight, not over it
    assert W is None and torch.allclose(rw, raw.clamp_max(1.0))
    assert metrics["reward_r"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["rollout_weight_max"] == pytest.approx(1.0) and metrics["rollout_weight_min"] == pytest.approx(math.exp(-0.8))
    assert metrics["rollout_ess"] == pytest.approx(float(rw.sum() ** 2 / (rw**2).sum()))
    assert metrics["rollout_weights_clamped"] == pytest.approx(1 / 3)  # only p1 is over 1.0
    for i, a in enumerate(("vq", "mq", "ta")):
        assert metrics[f"reward_{a}"] == pytest.approx(sum(table[p][i] for p in table) / 3)
    assert list(m.history) == [pytest.approx([0.1 / 3, 0.2 / 3, -0.3 / 3])]
    # plain DMD loss takes W = None: the step runs
    from distill.dmd import dmd_loss

    assert torch.isfinite(dmd_loss(x, torch.ones_like(x), W, rw))


def test_beta_warmup_ramps_the_rollout_weights_from_plain_dmd(tmp_path):
    m = _method(tmp_path, intra=False, beta=2.0, lam=0.0, beta_warmup=4)
    table = {"p0": [0.3, 0.3, 0.3], "p1": [-0.6, 0.0, 0.0]}
    m.reward = _FixedReward(table)
    x = torch.randn(2, 6, *m.student.latent_shape(1, 6)[2:], generator=torch.Generator().manual_seed(0))
    r = torch.tensor([0.3, -0.2])
    for step, beta in [(1, 0.0), (2, 0.5), (3, 1.0), (5, 2.0), (40, 2.0)]:  # (step - 1) / 4 of beta, then beta
        m.step = step
        _, rw, metrics = m.loss_weights(x, ["p0", "p1"])
        assert metrics["rollout_beta"] == pytest.approx(beta) and torch.allclose(rw, torch.exp(beta * r), atol=1e-6)
    assert m.current_beta() == 2.0 and _method(tmp_path, beta=2.0).current_beta() == 2.0  # no warm-up: full at step 1
    # the trainer's step number reaches the weights through train_step
    from test_method_steps import _Recording

    m = _method(tmp_path, intra=False, beta=2.0, beta_warmup=4)
    assert m.train_step(1, _Recording())["rollout_beta"] == 0.0 and m.train_step(3, _Recording())["rollout_beta"] == 1.0
    assert m.train_step(1, _Recording())["rollout_ess"] == pytest.approx(2.0)  # beta 0: equal weights, full batch


def test_loss_weights_with_saliency_give_mean_one_maps_and_per_frame_metrics(tmp_path):
    m = _method(tmp_path, beta=1.0, lam=0.5, balance_warmup=2)
    table = {"p0": [0.2, -0.1, 0.4], "p1": [1.0, 0.5, -0.3]}
    m.reward = _FixedReward(table)
    m.history.extend([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    x = torch.randn(2, 6, *m.student.latent_shape(1, 6)[2:], generator=torch.Generator().manual_seed(1))
    W, rw, metrics = m.loss_weights(x, ["p0", "p1"])
    # the window (3 steps) keeps the last 3 of the 4; halves of 1: [0 0 0] vs [1 0 -1]
    hist = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    pen = 0.5 * float(balance_penalty(hist, 2))
    r = torch.tensor([sum(table["p0"]) / 3, sum(table["p1"]) / 3]) - pen
    assert torch.allclose(rw, torch.exp(r), atol=1e-6)
    assert W.shape == (2, 6, 1, *x.shape[-2:]) and torch.allclose(W.mean(dim=(1, 2, 3, 4)), torch.ones(2), atol=1e-5)
    pixels = m.student.decode(x)
    z = torch.tensor([table["p0"], table["p1"]])
    from distill.stream_r1 import saliency_to_latent

    S = fuse_saliency(torch.stack([pixels[:, :, 0].abs() * (i + 1) for i in range(3)], 1), z, m.sr1.temperature)
    t = temporal_weights(saliency_to_latent(S, 6, x.shape[-2:]), m.sr1.tau_min)
    for f in range(6):  # the frame's weight averaged over the batch's rollouts
        assert metrics[f"temporal_w{f}"] == pytest.approx(float(t[:, f].mean()), rel=1e-5)
    assert abs(float(t[0].mean()) - 1) < 1e-5 and not torch.allclose(t[0], t[1])
    # where the fused saliency falls: the share on the object, by the probe's foreground rule, logged per step
    share, area = object_saliency_share(S, pixels, 0.35)
    assert metrics["saliency_on_object"] == pytest.approx(float(share.mean()), rel=1e-5)
    assert metrics["object_area"] == pytest.approx(float(area.mean()), rel=1e-5)


def test_balance_penalty_by_hand_with_a_nonzero_early_half_and_more_steps_than_axes():
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 0.5], [2.0, 1.0], [4.0, 4.0]])  # T = 5, M = 2: halves of 2
    early, recent = h[:2].mean(0), h[-2:].mean(0)  # (2, 1) and (3, 2.5)
    delta = recent - early  # (1, 1.5): population std 0.25
    assert float(balance_penalty(h, 2)) == pytest.approx(float(delta.std(unbiased=False))) == pytest.approx(0.25)
    assert float(balance_penalty(h, 6)) == 0.0


def test_pixel_saliency_to_latent_frames_for_each_frame_ratio():
    from distill.stream_r1 import saliency_to_latent

    S = torch.arange(5 * 4.0).view(1, 5, 2, 2).repeat(2, 1, 1, 1)
    S[1] *= -1
    two = saliency_to_latent(S, 2, (1, 1))  # 5 -> 2: frame 0 alone, then frames 1..4 (a causal VAE's 4k+1)
    assert torch.allclose(two[:, :, 0, 0], torch.stack([S[:, 0].mean((1, 2)), S[:, 1:].mean((1, 2, 3))], 1))
    one = saliency_to_latent(S, 1, (2, 2))  # 5 -> 1: all frames pooled
    assert torch.allclose(one[:, 0], S.mean(1))
    S6 = torch.cat((S, S[:, :1] + 100), 1)
    even = saliency_to_latent(S6, 3, (2, 2))  # 6 -> 3: no 2k+1 layout, pooled evenly in time
    assert torch.allclose(even, torch.stack([S6[:, :2].mean(1), S6[:, 2:4].mean(1), S6[:, 4:].mean(1)], 1))
    causal3 = saliency_to_latent(S[:, :4], 2, (2, 2))  # 4 -> 2 fits 3k+1: frame 0, then 1..3
    assert torch.allclose(causal3, torch.stack([S[:, 0], S[:, 1:4].mean(1)], 1))


def test_object_saliency_share_hand_computed():
    # one 4x4 frame, grey background 0.5, a 2x2 white object in the corner: the object is 4 of 16 pixels
    pixels = torch.full((1, 1, 3, 4, 4), 0.5)
    pixels[..., :2, :2] = 1.0
    uniform = torch.ones(1, 1, 4, 4)
    share, area = object_saliency_share(uniform, pixels, threshold=0.35)
    assert float(area) == pytest.approx(0.25) and float(share) == pytest.approx(0.25)
    on_object = uniform.clone()
    on_object[..., :2, :2] = 3.0  # three times the saliency on the object: 12 of 24
    share, _ = object_saliency_share(on_object, pixels, threshold=0.35)
    assert float(share) == pytest.approx(0.5)
    # a faint object (0.2 from the background) is below the probe's threshold: no object, no share
    faint = torch.full((1, 1, 3, 4, 4), 0.5)
    faint[..., :2, :2] = 0.5 + 0.2 / 3**0.5
    share, area = object_saliency_share(on_object, faint, threshold=0.35)
    assert float(area) == 0.0 and float(share) == 0.0
