"""Statistics for claims: paired differences with bootstrap intervals, AUC, effective sample size."""

from __future__ import annotations

import torch


def paired_bootstrap(diff: torch.Tensor, reps: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired differences ``diff`` (S training seeds, U prompts x sampling seeds) and its bootstrap interval.

    Each replicate resamples the training seeds and the evaluation units with replacement,
    independently, and takes the mean; the interval is the replicates' central ``level``
    quantiles (percentile bootstrap).
    """
    diff = torch.as_tensor(diff, dtype=torch.float64)
    if diff.ndim == 1:
        diff = diff[None]
    S, U = diff.shape
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(reps, dtype=torch.float64)
    for i in range(reps):
        s = torch.randint(S, (S,), generator=g)
        u = torch.randint(U, (U,), generator=g)
        means[i] = diff[s][:, u].mean()
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(diff.mean()), lo, hi


def auc_difference(a: list[float], b: list[float], labels: list[bool], reps: int = 1000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float] | None:
    """AUC(b) - AUC(a) of two scores of the same items against one labelling, and its paired bootstrap interval
    (each replicate resamples the items, so both scores see the same ones); None without both classes."""
    base, cand = auc(a, labels), auc(b, labels)
    if base is None or cand is None:
        return None
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(reps):
        i = torch.randint(len(labels), (len(labels),), generator=g).tolist()
        x, y = auc([a[k] for k in i], [labels[k] for k in i]), auc([b[k] for k in i], [labels[k] for k in i])
        if x is not None and y is not None:
            diffs.append(y - x)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(torch.tensor(diffs, dtype=torch.float64), torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return cand - base, lo, hi


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """Probability that a positive scores above a negative (ties count half); None without both classes."""
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    if not pos or not neg:
        return None
    p, n = torch.tensor(pos, dtype=torch.float64), torch.tensor(neg, dtype=torch.float64)
    greater = (p[:, None] > n[None]).double().sum() + 0.5 * (p[:, None] == n[None]).double().sum()
    return float(greater / (len(pos) * len(neg)))


def effective_sample_size(weights: torch.Tensor) -> float:
    """(sum w)^2 / sum w^2: how many equally weighted samples a weighted batch is worth."""
    w = weights.detach().double()
    return float(w.sum() ** 2 / (w**2).sum().clamp_min(1e-300))
