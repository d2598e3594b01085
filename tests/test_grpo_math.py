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


# ------------------------------------------------------------------- exactness against the references
def test_dr_grpo_divides_by_the_max_completion_length_not_the_batch_width():
    """The same tokens padded to width 7 or 16 give one loss (it was -0.0839 vs -0.0367)."""
    import math

    from genrl import grpo as G

    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([3, 7, 5, 2])
    logp7 = torch.randn(4, 7, generator=g) * 0.1
    mask7 = torch.arange(7)[None] < lens[:, None]
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    logp16 = torch.cat((logp7, torch.zeros(4, 9)), dim=1)
    mask16 = torch.cat((mask7, torch.zeros(4, 9, dtype=torch.bool)), dim=1)
    a = G.grpo_loss(logp7, logp7.detach() - 0.05, None, adv, mask7, mode="dr_grpo", max_len=16)
    b = G.grpo_loss(logp16, logp16.detach() - 0.05, None, adv, mask16, mode="dr_grpo", max_len=16)
    torch.testing.assert_close(a, b)
    per_token = -math.exp(0.05) * adv  # ratio e^0.05 = 1.051 lies inside the clip range [0.8, 1.2]
    want = (per_token[:, None] * mask7).sum() / (4 * 16)
    torch.testing.assert_close(a, want)


def test_tw_grpo_weights_follow_the_published_form_by_hand():
    """One weight per position shared by the group: geometric-mean reference, finished rows uniform,
    sum over the vocabulary of exp(d) - d - 1, group mean, min-max over positions, 1..alpha, masked -> 0."""
    import math

    from genrl import grpo as G

    g = torch.Generator().manual_seed(1)
    P, Gs, T, V, alpha = 2, 3, 4, 5, 2.5
    logits = torch.randn(P * Gs, T, V, generator=g)
    mask = torch.ones(P * Gs, T, dtype=torch.bool)
    mask[1, 2:] = False  # one rollout of the first group ended after 2 tokens
    mask[5, 3:] = False
    w = G.tw_group_weights(logits, mask, Gs, alpha)
    want = torch.zeros(P * Gs, T)
    for p in range(P):
        kl = []
        for t in range(T):
            rows = []
            for i in range(Gs):
                n = p * Gs + i
                rows.append(logits[n, t].log_softmax(-1) if mask[n, t] else torch.full((V,), -math.log(V)))
            mean = torch.stack(rows).mean(0)
            kl.append(sum(float((torch.exp(d) - d - 1).sum()) for d in ((mean - r).clamp(-11, 11) for r in rows)) / Gs)
        lo, hi = min(kl), max(kl)
        for i in range(Gs):
            for t in range(T):
                want[p * Gs + i, t] = (1 + (alpha - 1) * (kl[t] - lo) / (hi - lo + 1e-8)) * float(mask[p * Gs + i, t])
    torch.testing.assert_close(w, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(w[0], w[2]) and not torch.equal(w[0], w[3])  # shared within a group, not across


def test_token_logprobs_use_the_sampling_temperature():
    from genrl.methods.qa import build_vlm
    from genrl.worlds.qa import ShapesQA

    torch.manual_seed(0)
    qa = ShapesQA()
    model = build_vlm("debug", qa).eval()
    videos, _ = qa.items("train", range(2))
    emb = model.encode_video(videos)
    p_ids = torch.randint(3, 20, (2, 4))
    p_mask = torch.ones(2, 4, dtype=torch.bool)
    c_ids = torch.randint(3, 20, (2, 3))
    c_mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        raw = model.logits(emb, p_ids, p_mask, c_ids, c_mask).float()
        lp = model.token_logprobs(emb, p_ids, p_mask, c_ids, c_mask, temperature=0.7)
    want = torch.gather((raw / 0.7).log_softmax(-1), 2, c_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, want)
    assert not torch.allclose(lp, torch.gather(raw.log_softmax(-1), 2, c_ids[..., None]).squeeze(-1))


def test_t_grpo_threshold_defaults_to_video_r1s_0_8():
    from genrl import grpo as G
    from genrl.methods.grpo import TGRPOConfig

    ordered = torch.tensor([[1, 1, 1, 0]])  # 0.75
    shuffled = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0, 1]])  # 0.8: 0.75 >= 0.8 x 0.8 = 0.64
    bonus = G.temporal_bonus(ordered, shuffled, 0.3, TGRPOConfig().mu)
    torch.testing.assert_close(bonus, torch.tensor([[0.3, 0.3, 0.3, 0.0]]))
