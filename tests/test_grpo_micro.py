"""`train.grad_accum` in GRPO: the step's prompts, each with its whole group, split into passes whose losses
sum to the batch's. The gradient is the one-pass gradient for every aggregation and variant, each pass keeps
its share of the activations, and a bad split is one clear line."""

import pytest
import torch

from genrl.errors import UsageError
from genrl.memory import saved_bytes
from genrl.methods.common import OptimConfig
from genrl.methods.grpo import GRPOMethodConfig, TWGRPOConfig, build_grpo, micro_batches
from genrl.methods.qa import build_vlm
from genrl.train.trainer import StepContext, TrainConfig
from genrl.worlds.qa import ShapesQA

from tiny import OneProcess


def _step(parts: int, **kw):
    """One step from the same seed; SGD at lr 1 without clipping, so each weight moves by minus its gradient."""
    torch.manual_seed(0)
    policy = build_vlm("debug", ShapesQA())
    cfg = GRPOMethodConfig(**{"prompts_per_step": 5, "group_size": 4, "eval_num": 0, "temperature": 1.5, **kw})
    m = build_grpo(cfg, OptimConfig(lr=1e-3, warmup_steps=1), 0, policy)
    m.accuracy_reward = lambda item, text: float(len(text) % 3 == 0)  # rewards that differ within groups
    m.opt, m.sched = torch.optim.SGD([p for p in m.policy.parameters() if p.requires_grad], lr=1.0), None
    before = {n: p.detach().clone() for n, p in m.policy.named_parameters()}
    out = m.train_step(1, StepContext(OneProcess(), TrainConfig(grad_accum=parts, grad_clip=0)))
    moved = {n: before[n] - p.detach() for n, p in m.policy.named_parameters()}
    return out, moved


CASES = [dict(loss="grpo", beta=0.04), dict(loss="bnpo"), dict(loss="dapo", eps_high=0.28), dict(loss="dr_grpo"),
         dict(loss="grpo", iterations=2, beta=0.04),
         dict(variant="tw_grpo", loss="bnpo", tw_grpo=TWGRPOConfig(inversion_prob=0.0)), dict(variant="reg_grpo")]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={getattr(v, 'weights', v)}" for k, v in kw.items()))
def test_prompt_micro_batches_give_the_one_pass_gradient(kw):
    one, g1 = _step(1, **kw)
    assert one["grad_norm"] > 0 and sum(float(d.abs().sum()) for d in g1.values()) > 0
    for parts in (2, 5):  # 5 prompts in 2 parts (3 + 2) and in 5 (one group each)
        out, g = _step(parts, **kw)
        for n in g1:
            torch.testing.assert_close(g[n], g1[n], rtol=1e-5, atol=1e-7, msg=f"{n} with {parts} parts")
        for key in ("loss", "grad_norm", "clip_fraction", "kl"):
            if key in one:
                assert out[key] == pytest.approx(one[key], rel=1e-5, abs=1e-8), key


def test_each_pass_keeps_its_share_of_the_activations_and_a_split_past_the_prompts_is_refused():
    torch.manual_seed(0)
    cfg = GRPOMethodConfig(prompts_per_step=4, group_size=4, eval_num=0, beta=0.0)
    m = build_grpo(cfg, OptimConfig(lr=1e-3, warmup_steps=1), 0, build_vlm("debug", ShapesQA()))
    ro = m.rollout(*m.sample())
    adv = torch.zeros(ro.mask.shape[0])
    parts = micro_batches(ro, 2)
    assert [len(p.items) for p, _ in parts] == [2, 2] and [r for _, r in parts] == [slice(0, 8), slice(8, 16)]
    whole = saved_bytes(lambda: m.objective(ro, adv, None, None))
    half = [saved_bytes(lambda p=p, r=r: m.objective(p, adv[r], None, None)) for p, r in parts]
    assert max(half) < 0.6 * whole, (half, whole)
    with pytest.raises(UsageError, match=r"^train.grad_accum is 5: it splits a step's 4 prompts .* at most 4$"):
        micro_batches(ro, 5)
