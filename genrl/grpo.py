"""Group-relative policy optimisation maths, as pure functions.

Shapes: a batch holds G rollouts per prompt, laid out prompt-major
(rows [0, G) belong to prompt 0). Per-token tensors are (N, T) with a
boolean completion mask.

    A_i     = (r_i - mean_group) / (std_group + eps)         (or batch std, or none)
    rho     = exp(logp - logp_old)
    loss_t  = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * k3
    k3      = exp(ref - logp) - (ref - logp) - 1

Aggregations: grpo (mean over each sequence's tokens, then over sequences),
bnpo (mean over all tokens of the batch), dr_grpo (sum / (N * max_len)),
dapo (token-level mean over the batch, as bnpo).

DPO (VerIPO's preference phase), on sequence log-probabilities (token sums):

    loss = -log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))
"""

from __future__ import annotations

import math

import torch

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Advantages (N,) from rewards (N,) of N = prompts * group_size rollouts."""
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(SCALES)}")
    g = rewards.view(-1, group_size)
    centred = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "group":
        return centred / (g.std(dim=1, keepdim=True).expand_as(g).reshape(-1) + eps)
    if scale == "batch":
        return centred / (rewards.std() + eps)
    return centred


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_token_loss(logp, old_logp, advantages, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """-min(rho A, clip(rho) A) per token; advantages (N,) broadcast over tokens."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    return -torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)


def regression_token_loss(logp, old_logp, advantages) -> torch.Tensor:
    """Reg-GRPO: regress the (log) ratio onto the advantage directly — no clip, no min."""
    return (torch.exp(logp - old_logp) - 1 - advantages[:, None]) ** 2


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, mode: str = "grpo", max_len: int | None = None,
              whole: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Reduce (N, T) per-token losses over the completion mask. ``whole`` = (rows, completion tokens) of the
    batch these rows are a micro-batch of: the micro-batches' results then sum to the whole batch's."""
    rows, tokens = whole if whole is not None else (token_loss.shape[0], mask.sum())
    if mode == "grpo":
        return ((token_loss * mask).sum(1) / mask.sum(1).clamp_min(1)).sum() / rows
    if mode in ("bnpo", "dapo"):
        return (token_loss * mask).sum() / tokens.clamp_min(1)
    if mode == "dr_grpo":
        return (token_loss * mask).sum() / (rows * (max_len or token_loss.shape[1]))
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float = 0.2, mode: str = "grpo", token_weights: torch.Tensor | None = None,
              regression: bool = False, max_len: int | None = None,
              whole: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The full per-batch objective; ``token_weights`` (N, T) scale each token (TW-GRPO); ``max_len``
    is the longest completion the sampler may produce (Dr. GRPO divides by it, not by the batch's width);
    ``whole`` makes it a micro-batch's share of a larger batch (see :func:`aggregate`)."""
    if regression:
        per_token = regression_token_loss(logp, old_logp, advantages)
    else:
        per_token = clipped_token_loss(logp, old_logp, advantages, eps_low, eps_high)
    if beta:  # the reference is only needed (and only given) with a KL term
        per_token = per_token + beta * k3_kl(logp, ref_logp)
    if token_weights is not None:
        per_token = per_token * token_weights
    return aggregate(per_token, mask, mode, max_len, whole)


def tw_group_weights(logits: torch.Tensor, mask: torch.Tensor, group_size: int, alpha: float,
                     clamp: float = 11.0) -> torch.Tensor:
    """TW-GRPO token weights as published: one weight per position, shared by a prompt's group.

    Per position t, the group's reference is the mean of its rollouts' log-probabilities (a geometric
    mean of the distributions; rollouts that already ended count as uniform). Each rollout's divergence
    from it is sum_v exp(d) - d - 1 with d = clamp(mean_logp - logp_i, +-clamp); averaged over the group,
    min-max normalised over positions and mapped to 1..alpha; masked tokens get 0 (the loss ignores them).
    Use with token-level aggregation (``loss: bnpo``), as the published objective does."""
    N, T, V = logits.shape
    G = group_size
    logp = logits.float().log_softmax(-1).view(N // G, G, T, V)
    m = mask.view(N // G, G, T, 1)
    logp = torch.where(m, logp, torch.full_like(logp, -math.log(V)))
    kl = tw_position_divergence(logp, clamp)
    lo, hi = kl.amin(dim=1, keepdim=True), kl.amax(dim=1, keepdim=True)
    w = 1 + (alpha - 1) * (kl - lo) / (hi - lo).clamp_min(1e-12)  # equal positions: kl - lo = 0, weight 1
    return (w.repeat_interleave(G, 0) * mask).detach()


def tw_position_divergence(logp: torch.Tensor, clamp: float) -> torch.Tensor:
    """(P, T): per position, the group's mean over rollouts of sum_v exp(d) - d - 1, d = clamp(mean_g logp - logp_i)
    for log-probabilities ``logp`` (P, G, T, V) (TW-GRPO's divergence from the group's geometric mean)."""
    d = (logp.mean(dim=1, keepdim=True) - logp).clamp(-clamp, clamp)
    return (torch.exp(d) - d - 1).sum(-1).mean(1)


def tw_token_weights(token_kl: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """genrl's earlier TW variant (``tw_grpo.weights: per_rollout``): w_t = 1 + (alpha - 1) * minmax(KL_t)
    within each rollout, KL to the group's arithmetic-mean distribution (masked tokens -> 1)."""
    big = torch.finfo(token_kl.dtype).max
    lo = torch.where(mask, token_kl, big).amin(dim=1, keepdim=True)
    hi = torch.where(mask, token_kl, -big).amax(dim=1, keepdim=True)
    norm = (token_kl - lo) / (hi - lo).clamp_min(1e-12)  # a constant row: 0 / eps = 0, weight 1
    return torch.where(mask, 1 + (alpha - 1) * norm, torch.ones_like(token_kl))


def temporal_bonus(ordered_correct: torch.Tensor, shuffled_correct: torch.Tensor, alpha: float, mu: float) -> torch.Tensor:
    """Video-R1 T-GRPO: (P, G) bonus ``alpha`` on correct ordered-frame rollouts of the prompts
    whose ordered accuracy reaches ``mu`` x the accuracy with shuffled frames (P, G')."""
    ok = ordered_correct.float().mean(1) >= mu * shuffled_correct.float().mean(1)
    return alpha * ordered_correct.float() * ok[:, None].float()


def group_mean_kl(logits: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """TW-GRPO token divergence: KL(p_i,t || mean over the group of p_t) per token (N, T);
    the mean runs over the group's rollouts that are still generating at t."""
    logp = logits.float().log_softmax(-1)
    p = logp.exp() * mask[..., None]
    G = group_size
    mean = p.view(-1, G, *p.shape[1:]).sum(1) / mask.view(-1, G, mask.shape[1]).sum(1).clamp_min(1)[..., None]
    mean = mean.repeat_interleave(G, 0).clamp_min(1e-12)
    return ((logp.exp() * (logp - mean.log())).sum(-1) * mask).detach()


def saturated_groups(rewards: torch.Tensor, group_size: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Reg-GRPO difficulty: per prompt, +1 when every rollout scored >= ``high`` (too easy),
    -1 when every rollout scored <= ``low`` (too hard), else 0. Such groups carry no advantage."""
    g = rewards.view(-1, group_size)
    return (g >= high).all(1).long() - (g <= low).all(1).long()


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean DPO loss over pairs (each argument (B,): a completion's summed token log-probs) and the implicit reward
    margins beta * ((logp_c - ref_c) - (logp_r - ref_r)) (B,)."""
    margin = beta * ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin).mean(), margin
