"""genrl's GRPO objective against TRL's GRPOTrainer loss on identical inputs (skipped without trl).

TRL computes the loss inside a trainer method; it is called here on a stand-in trainer whose
log-prob hook returns the given log-probs, so only the loss arithmetic is compared.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from genrl.grpo import grpo_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


class _Acc:
    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(logp, old, ref, adv, mask, loss_type, beta, eps_low, eps_high, max_len):
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=False, model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, accelerator=_Acc(), _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {"prompt_ids": torch.zeros(logp.shape[0], 2, dtype=torch.long), "prompt_mask": torch.ones(logp.shape[0], 2),
              "completion_ids": torch.zeros_like(logp, dtype=torch.long), "completion_mask": mask.float(),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().float()}
    return trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_and_every_token_match_trl(loss_type):
    g = torch.Generator().manual_seed(0)
    N, T = 4, 5
    logp = -torch.rand(N, T, generator=g) * 2
    old = logp + 0.4 * torch.randn(N, T, generator=g)  # ratios on both sides of the clip range
    ref = logp + 0.3 * torch.randn(N, T, generator=g)
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    args = dict(beta=0.04, eps_low=0.2, eps_high=0.28)
    ours = grpo_loss(logp, old, ref, adv, mask, mode=loss_type, **args)
    theirs = _trl_loss(logp, old, ref, adv, mask, loss_type, max_len=T, **args)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    for i, t in mask.nonzero().tolist():  # each token alone: the per-token losses agree
        one = torch.zeros_like(mask)
        one[i, t] = True
        a = grpo_loss(logp, old, ref, adv, one, mode=loss_type, **args)
        b = _trl_loss(logp, old, ref, adv, one, loss_type, max_len=T, **args)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
