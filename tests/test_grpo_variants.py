"""GRPO on video QA: cached embeddings, a step that learns, and each variant differing from plain
GRPO exactly where it should."""

import dataclasses

import pytest
import torch

from genrl import grpo as G
from genrl.methods.common import OptimConfig
from genrl.methods.grpo import GRPOMethodConfig, RegGRPOConfig, TWGRPOConfig, build_grpo, splice
from genrl.methods.qa import build_vlm
from genrl.train.trainer import StepContext, TrainConfig
from genrl.worlds.qa import ShapesQA

from tiny import OneProcess


def _method(variant="grpo", seed=0, **kw):
    torch.manual_seed(seed)
    policy = build_vlm("debug", ShapesQA())
    cfg = GRPOMethodConfig(**{"variant": variant, "prompts_per_step": 3, "group_size": 4, "eval_num": 0, **kw})
    return build_grpo(cfg, OptimConfig(lr=1e-3, warmup_steps=1), seed, policy)


def _objective(m, ro, iterations_old=None):
    adv = G.group_advantages(ro.rewards, m.cfg.group_size, m.cfg.scale)
    ref = m._logprobs(m.ref, ro) if m.ref is not None else None
    return m.objective(ro, adv, iterations_old, ref)[0]


def test_pure_variant_maths_hand_computed():
    ordered = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    shuffled = torch.tensor([[1, 0], [1, 1], [0, 0]])
    bonus = G.temporal_bonus(ordered, shuffled, alpha=0.3, mu=1.0)
    # prompt 0: 0.5 >= 0.5 -> bonus on its right answers; prompt 1: 0.5 < 1.0 -> none; prompt 2: 0 >= 0 but none right
    assert torch.allclose(bonus, torch.tensor([[0.3, 0, 0.3, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert torch.equal(G.saturated_groups(torch.tensor([1.0, 1, 0, 1, 0, 0]), 2), torch.tensor([1, 0, -1]))
    logits = torch.log(torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]]]))  # a group of 2 rollouts, 1 token, 2 classes
    kl = G.group_mean_kl(logits, torch.ones(2, 1, dtype=torch.bool), 2)
    mean = torch.tensor([0.7, 0.3])
    want = [sum(p * torch.log(p / mean)) for p in (torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1]))]
    assert torch.allclose(kl[:, 0], torch.stack(want), atol=1e-6)
    same = G.group_mean_kl(logits[:1].expand(3, 1, 2), torch.ones(3, 1, dtype=torch.bool), 3)
    assert torch.allclose(same, torch.zeros(3, 1), atol=1e-6)  # a group that agrees diverges nowhere
    assert torch.allclose(G.regression_token_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.tensor([0.25])),
                          torch.tensor([[0.0625]]))  # (1.5 - 1 - 0.25)^2


def test_cached_embeddings_give_identical_logprobs_and_encode_once_per_prompt():
    on, off = _method(cache_video=True), _method(cache_video=False)
    videos, items = on.sample()
    assert [it.prompt() for it in off.sample()[1]] == [it.prompt() for it in items]  # both streams at the same place
    ro_on = on.rollout(videos, items)
    assert on.vision_rows == 3  # one encoding per question
    ro_off = off.rollout(videos, items)
    assert off.vision_rows == 12  # one per rollout row
    assert torch.equal(ro_on.ids, ro_off.ids)  # same sampler stream, same answers
    lp_on, lp_off = on._logprobs(on.policy, ro_on), off._logprobs(off.policy, ro_off)
    torch.testing.assert_close(lp_on, lp_off, rtol=0, atol=1e-6)
    assert on.vision_rows == 3 and off.vision_rows == 24  # the cache is reused; without it the tower runs again


def test_a_grpo_step_changes_the_policy_but_not_the_vision_tower_or_reference():
    m = _method(beta=0.04, temperature=1.5)
    m.accuracy_reward = lambda item, text: float(len(text.split()) % 2)  # a random policy earns no task reward
    before = {k: v.clone() for k, v in m.policy.state_dict().items()}
    ref_before = {k: v.clone() for k, v in m.ref.state_dict().items()}
    ctx = StepContext(OneProcess(), TrainConfig())
    for step in range(1, 4):
        out = m.train_step(step, ctx)
    after = m.policy.state_dict()
    assert {"loss", "grad_norm", "reward", "reward_accuracy", "kl", "clip_fraction"} <= set(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(not k.startswith("visual.") for k in changed)
    assert any(k.startswith("blocks.") for k in changed)
    assert all(torch.equal(ref_before[k], v) for k, v in m.ref.state_dict().items())


def test_train_vision_updates_the_tower_and_refuses_the_cache():
    m = _method(cache_video=False, train_vision=True, temperature=1.5)
    m.accuracy_reward = lambda item, text: float(len(text.split()) % 2)
    before = {k: v.clone() for k, v in m.policy.state_dict().items()}
    m.train_step(1, StepContext(OneProcess(), TrainConfig()))
    changed = [k for k, v in m.policy.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("blocks.") for k in changed)
    with pytest.raises(ValueError, match="train_vision needs grpo.cache_video=false"):
        _method(train_vision=True)


def _rollouts(m, accuracy):
    videos, items = m.sample()
    ro = m.rollout(videos, items)
    ro.accuracy = torch.tensor(accuracy, dtype=torch.float)
    ro.rewards = ro.accuracy + m.cfg.format_weight * ro.fmt
    return ro


def test_t_grpo_adds_the_bonus_only_to_right_answers_where_order_helped(monkeypatch):
    m = _method("t_grpo")
    acc = [1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    ro = _rollouts(m, acc)
    plain = ro.rewards.clone()
    shuffled = dataclasses.replace(ro, accuracy=torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]))
    seen = {}

    def fake_rollout(videos, items, group=None):
        seen["group"], seen["videos"] = group, videos
        return shuffled

    monkeypatch.setattr(m, "rollout", fake_rollout)
    out = m.adjust(ro)
    assert seen["group"] == m.cfg.t_grpo.shuffled
    assert not torch.equal(seen["videos"], ro.videos) and torch.allclose(seen["videos"].sum(1), ro.videos.sum(1))  # frames permuted
    # prompt 0: 0.5 >= 0.25 -> +0.3 on its two right answers; prompt 1: 0.5 < 1.0 -> nothing; prompt 2: none right
    assert torch.allclose(out.rewards - plain, torch.tensor([0.3, 0, 0.3, 0, 0, 0, 0, 0, 0, 0, 0, 0]))


def test_tw_grpo_weights_tokens_and_reduces_to_grpo_at_alpha_one():
    base, tw2 = _method("grpo"), _method("tw_grpo")
    tw1 = _method("tw_grpo", tw_grpo=TWGRPOConfig(alpha=1.0, inversion_prob=0.0))
    videos, items = base.sample()
    ro = base.rollout(videos, items)
    ro.rewards = torch.arange(12, dtype=torch.float) % 3  # advantages everywhere
    l0, l1, l2 = (_objective(m, ro) for m in (base, tw1, tw2))
    torch.testing.assert_close(l0, l1, rtol=0, atol=0)
    assert not torch.allclose(l0, l2)
    _, logits = base.policy.token_logprobs(base.embeddings(ro), ro.prompt_ids, ro.prompt_mask, ro.ids, ro.mask, return_logits=True)
    w = tw2.token_weights(ro, logits)
    assert torch.all(w[~ro.mask] == 0) and w[ro.mask].min() >= 1 and w[ro.mask].max() <= 2 + 1e-6
    assert bool((w[ro.mask] > 1.5).any())  # each group's most divergent position gets weight 2
    per_rollout = _method("tw_grpo", tw_grpo=TWGRPOConfig(weights="per_rollout")).token_weights(ro, logits)
    assert torch.all(per_rollout[~ro.mask] == 1) and not torch.allclose(per_rollout * ro.mask, w)
    # inversion: about inversion_prob of choice questions ask for the wrong options, scored softly
    inv = _method("tw_grpo", prompts_per_step=200)
    _, items = inv.sample()
    flipped = [it for it in items if it.question.startswith("which options are not right")]
    assert 0.15 < len(flipped) / 200 < 0.4
    soft = inv.accuracy_reward(flipped[0], f"<think> x </think> <answer> {flipped[0].answer.split()[0]} </answer>")
    assert soft == pytest.approx(1 / len(flipped[0].answer.split()))


def test_reg_grpo_regresses_and_rerolls_only_saturated_groups():
    m = _method("reg_grpo")
    ro = _rollouts(m, [1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0])  # too easy, mixed, too hard
    out = m.adjust(ro)
    assert torch.equal(out.ids[4:8], ro.ids[4:8]) and torch.equal(out.rewards[4:8], ro.rewards[4:8])  # untouched
    assert torch.equal(out.videos[1], ro.videos[1]) and out.items[1] is ro.items[1]
    assert not torch.equal(out.videos[0], ro.videos[0])  # easy: noised video, same question
    assert out.items[0].prompt() == ro.items[0].prompt()
    assert torch.equal(out.videos[2], ro.videos[2]) and "hint :" in out.items[2].prompt()  # hard: hinted question
    # the objective is the regression one: at the first update the ratio is 1, so each token costs A^2
    reg, plain = _method("reg_grpo", beta=0.0, reg_grpo=RegGRPOConfig(augment=False)), _method("grpo", beta=0.0)
    ro2 = _rollouts(plain, [1, 0, 1, 0] * 3)
    adv = G.group_advantages(ro2.rewards, 4)
    torch.testing.assert_close(_objective(reg, ro2), (adv**2).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_objective(plain, ro2), -adv.mean(), rtol=1e-5, atol=1e-6)  # clipped surrogate: -A


def test_splice_keeps_rows_aligned():
    m = _method()
    a = _rollouts(m, [0] * 12)
    b = m.rollout(a.videos[[2]], [a.items[2]])
    out = splice(a, [2], b)
    assert torch.equal(out.rewards[8:], b.rewards) and torch.equal(out.rewards[:8], a.rewards[:8])
    width = out.ids.shape[1]
    assert torch.equal(out.ids[8:, : b.ids.shape[1]], b.ids) and bool((out.ids[8:, b.ids.shape[1]:] == 0).all())
    assert out.prompt_ids.shape[1] == max(a.prompt_ids.shape[1], b.prompt_ids.shape[1]) and width >= a.ids.shape[1]
    assert out.texts == a.texts[:8] + b.texts and len(b.texts) == 4  # the decoded answers follow their rows
    assert a.texts == [m.policy.tokenizer.decode(r) for r in a.ids]


@pytest.mark.parametrize("name, differs", [
    ("t_grpo", {"variant": "t_grpo"}), ("tw_grpo", {"variant": "tw_grpo", "loss": "bnpo"}), ("reg_grpo", {"variant": "reg_grpo"}),
    ("dapo", {"loss": "dapo", "eps_high": 0.28, "beta": 0.0}), ("dr_grpo", {"scale": "none", "loss": "dr_grpo"}),
])
def test_variant_configs_change_only_their_own_settings(name, differs):
    from genrl.cli.qa import GRPOConfig
    from genrl.config import load_config
    from genrl.methods.grpo import METHODS

    base = load_config(GRPOConfig, "configs/grpo_video_qa.yaml")
    cfg = load_config(GRPOConfig, f"configs/grpo/{name}.yaml")
    a, b = dataclasses.asdict(base.grpo), dataclasses.asdict(cfg.grpo)
    assert {k: b[k] for k in b if a[k] != b[k] and not isinstance(b[k], dict)} == differs
    assert cfg.optim == base.optim and cfg.train == base.train and cfg.out_dir == f"runs/{name}"
    assert type(_method(cfg.grpo.variant)).__name__ == METHODS[cfg.grpo.variant].__name__


def test_dapo_and_dr_grpo_aggregate_differently_from_grpo():
    m = _method()
    ro = _rollouts(m, [1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0])
    assert len(set(ro.mask.sum(1).tolist())) > 1  # different lengths: the aggregations disagree
    losses = {}
    for loss in ("grpo", "dapo", "dr_grpo"):
        m.cfg.loss = loss
        losses[loss] = float(_objective(m, ro).detach())
    lp = m._logprobs(m.policy, ro)
    adv = G.group_advantages(ro.rewards, 4)
    tok = -adv[:, None].expand_as(lp) * ro.mask
    assert losses["dapo"] == pytest.approx(float(tok.sum() / ro.mask.sum()), abs=1e-5)
    assert losses["dr_grpo"] == pytest.approx(float(tok.sum() / (12 * ro.mask.shape[1])), abs=1e-5)
    assert losses["grpo"] == pytest.approx(float((tok.sum(1) / ro.mask.sum(1)).mean()), abs=1e-5)
