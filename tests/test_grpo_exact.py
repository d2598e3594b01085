"""GRPO maths against plain-Python loops at the edges the other fixtures leave out: published defaults,
the eps in the advantage scale, clamps that bite, finished rollouts, positions with one live rollout,
and the exact error messages."""

import math
import statistics

import pytest
import torch

import genrl.grpo as G


def test_advantages_divide_by_std_plus_eps_exactly_per_group_and_per_batch():
    r = torch.tensor([0.0, 1.0, 1.0, 3.0, 2.0, 2.0, 2.5, 5.0], dtype=torch.float64)
    a = G.group_advantages(r, 4)  # defaults: group scale, eps 1e-4
    want = []
    for g in (r[:4].tolist(), r[4:].tolist()):
        m, s = statistics.mean(g), statistics.stdev(g)
        want += [(x - m) / (s + 1e-4) for x in g]
    assert torch.allclose(a, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    b = G.group_advantages(r, 4, "batch")
    s = statistics.stdev(r.tolist())
    centred = [x - statistics.mean(g) for g in (r[:4].tolist(), r[4:].tolist()) for x in g]
    assert torch.allclose(b, torch.tensor([c / (s + 1e-4) for c in centred], dtype=torch.float64), rtol=1e-12, atol=0)


def test_published_defaults_of_the_clip_the_kl_weight_and_the_aggregation():
    logp = torch.log(torch.tensor([[0.5, 1.5, 1.1], [0.9, 1.3, 0.7]]))
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    loss = G.clipped_token_loss(logp, old, adv)  # eps_low = eps_high = 0.2
    want = [[-0.5, -1.2, -1.1], [1.8, 2.6, 1.6]]  # -min(rho A, clip(rho, 0.8, 1.2) A)
    assert torch.allclose(loss, torch.tensor(want), atol=1e-6)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    ref = torch.full((2, 3), -0.3)
    plain = G.grpo_loss(logp, old, ref, adv, mask)  # beta 0: no KL term; mode grpo
    per_seq = [(-0.5 - 1.2) / 2, (1.8 + 2.6 + 1.6) / 3]
    assert float(plain) == pytest.approx(sum(per_seq) / 2, abs=1e-6)
    assert torch.equal(G.aggregate(loss, mask), G.aggregate(loss, mask, "grpo"))
    with_kl = G.grpo_loss(logp, old, ref, adv, mask, beta=0.5)
    d = ref - logp
    k3 = torch.exp(d) - d - 1
    want_kl = G.aggregate(loss + 0.5 * k3, mask, "grpo")
    assert torch.allclose(with_kl, want_kl) and float(with_kl) > float(plain)


def test_unknown_modes_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"^unknown loss aggregation 'mean'; valid: grpo, bnpo, dr_grpo, dapo$"):
        G.aggregate(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), "mean")
    with pytest.raises(ValueError, match=r"^unknown advantage scale 'z'; valid: group, batch, none$"):
        G.group_advantages(torch.zeros(4), 2, "z")


def _loops_position_divergence(logp, clamp):
    P, Gs, T, V = logp.shape
    out = torch.zeros(P, T, dtype=torch.float64)
    for p in range(P):
        for t in range(T):
            mean = [sum(float(logp[p, g, t, v]) for g in range(Gs)) / Gs for v in range(V)]
            total = 0.0
            for g in range(Gs):
                for v in range(V):
                    d = min(max(mean[v] - float(logp[p, g, t, v]), -clamp), clamp)
                    total += math.exp(d) - d - 1
            out[p, t] = total / Gs
    return out


def test_tw_divergence_by_loops_with_the_clamp_biting_and_finished_rollouts_uniform():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 5, generator=g)  # 2 prompts x 3 rollouts
    logits[0, 1] = torch.tensor([30.0, -30.0, 0.0, 0.0, 0.0])  # one rollout far from its two siblings: the clamp
    mask = torch.ones(6, 3, dtype=torch.bool)  # bites on its side only, so clamped d no longer sum to 0
    mask[1, 2] = False  # rollout 1 finished before position 2: counts as uniform there
    logp = logits.float().log_softmax(-1).view(2, 3, 3, 5)
    logp[0, 1, 2] = torch.full((5,), -math.log(5))
    d = _loops_position_divergence(logp.double(), 11.0)
    assert float((logp.mean(1, keepdim=True) - logp).abs().max()) > 12  # past the default clamp (11) and 12
    assert torch.allclose(G.tw_position_divergence(logp, 11.0).double(), d, rtol=1e-5)
    w = G.tw_group_weights(logits, mask, 3, alpha=3.0)  # default clamp 11
    for p in range(2):
        lo, hi = d[p].min(), d[p].max()
        extra = 2.0 * (d[p] - lo) / (hi - lo)  # w - 1, compared relatively (float32 near 1: 2%): small where one position dominates
        for r in range(3):
            row = 3 * p + r
            assert torch.allclose((w[row].double() - 1) * mask[row], extra * mask[row], rtol=2e-2, atol=1e-9)


def test_tw_weights_are_one_where_positions_do_not_differ():
    logits = torch.zeros(2, 3, 4)  # identical uniform rollouts: every position the same divergence (0)
    w = G.tw_group_weights(logits, torch.ones(2, 3, dtype=torch.bool), 2, alpha=2.0)
    assert torch.equal(w, torch.ones(2, 3))


def test_per_rollout_tw_weights_min_max_within_each_rollout_over_its_live_tokens():
    kl = torch.tensor([[0.2, 0.45, 0.7, 9.0], [1.0, 1.0, 1.0, 1.0], [3.0, 3.25, 3.1, -5.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True], [True, True, True, False]])
    w = G.tw_token_weights(kl, mask, alpha=2.0)
    want = torch.tensor([[1.0, 1.5, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.4, 1.0]])
    assert torch.allclose(w, want, atol=1e-6)


def test_group_mean_kl_by_loops_with_finished_rollouts_and_a_position_with_one_live_rollout():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, 3, generator=g)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[0, 2:] = False  # group 0: rollout 0 ends after 2 tokens, rollout 1 after 3: position 3 has one live rollout
    mask[1, 3:] = False
    mask[4, 1:] = False
    kl = G.group_mean_kl(logits, mask, 3)
    p = logits.double().softmax(-1)
    for grp in range(2):
        rows = range(3 * grp, 3 * grp + 3)
        for t in range(4):
            live = [i for i in rows if mask[i, t]]
            mean = [sum(float(p[i, t, v]) for i in live) / max(len(live), 1) for v in range(3)]
            for i in rows:
                want = sum(float(p[i, t, v]) * math.log(float(p[i, t, v]) / mean[v]) for v in range(3)) if mask[i, t] else 0.0
                assert float(kl[i, t]) == pytest.approx(want, abs=1e-5), (i, t)
    assert float(kl[2, 3]) == pytest.approx(0.0, abs=1e-6)  # alone at position 3: its own mean


def test_tw_weights_by_loops_when_positions_differ_by_little():
    g = torch.Generator().manual_seed(5)
    logits = 0.3 * torch.randn(4, 5, 6, generator=g)  # close rollouts: divergences well under 1
    mask = torch.ones(4, 5, dtype=torch.bool)
    logp = logits.float().log_softmax(-1).view(2, 2, 5, 6)
    d = _loops_position_divergence(logp.double(), 11.0)
    assert float(d.max() - d.min()) < 0.5
    w = G.tw_group_weights(logits, mask, 2, alpha=2.0)
    for p in range(2):
        want = 1 + (d[p] - d[p].min()) / (d[p].max() - d[p].min())
        for r in range(2):
            assert torch.allclose(w[2 * p + r].double(), want, rtol=1e-4)
