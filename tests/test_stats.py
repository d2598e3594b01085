import math

import torch

from genrl.stats import auc, effective_sample_size, paired_bootstrap


def test_paired_bootstrap_hand_values():
    assert paired_bootstrap(torch.full((3, 50), 0.25)) == (0.25, 0.25, 0.25)  # no spread, no interval
    mean, lo, hi = paired_bootstrap(torch.tensor([[0.0, 1.0]]), reps=4000)
    assert mean == 0.5 and lo == 0.0 and hi == 1.0  # replicate means are 0, 0.5 or 1
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(5, 400, generator=g, dtype=torch.float64)
    m, lo, hi = paired_bootstrap(noise + 0.3)
    assert lo < m < hi and lo > 0.15 and hi < 0.45  # a real shift of 0.3 with unit noise over 2,000 pairs
    m, lo, hi = paired_bootstrap(noise)
    assert lo < 0 < hi  # no shift: the interval holds 0
    # seeds that disagree widen the interval beyond what the prompts alone give
    shifted = noise.clone()
    shifted[0] += 3.0
    assert paired_bootstrap(shifted)[2] - paired_bootstrap(shifted)[1] > hi - lo


def test_auc_and_effective_sample_size():
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.1, 0.9, 0.4], [True, False, False]) == 0.0
    assert auc([1.0], [True]) is None
    assert effective_sample_size(torch.ones(8)) == 8.0
    assert math.isclose(effective_sample_size(torch.tensor([1.0, 0.0, 0.0, 0.0])), 1.0)
    assert math.isclose(effective_sample_size(torch.tensor([2.0, 1.0])), 9 / 5)
