"""The shipped shapes reward model: saliency points at the object, scores rank corruptions."""

import pytest
import torch
import torch.nn.functional as F

from rewards.base import build_reward
from rewards.corruptions import blur, wrong_attributes
from genrl.worlds.shapes import ShapesWorld

WORLD = ShapesWorld()
SHIPPED = ["shapes-reward", "shapes-reward-b", "shapes-reward-student"]  # training default, held-out (another seed), fine-tuned on student clips


@pytest.mark.parametrize("weights", SHIPPED)
def test_ta_saliency_of_a_wrong_clip_concentrates_on_the_shape(weights):
    rm = build_reward("shapes", weights=weights)
    attrs, starts = WORLD.attributes("test", range(16))
    prompts = WORLD.captions(attrs)
    wrong = WORLD.render(wrong_attributes(attrs, 1, torch.Generator().manual_seed(0)), starts)
    sal = rm.saliency(wrong, prompts, axes=("ta",))["ta"]  # (B, F, H, W)
    bg = wrong[:, :, :, :1, :1]
    obj = ((wrong - bg).abs().sum(2) > 0.3).float()
    near = F.max_pool2d(obj.flatten(0, 1)[:, None], 5, 1, 2)[:, 0].unflatten(0, obj.shape[:2])  # object + 2 px
    share = (sal * near).sum((1, 2, 3)) / sal.sum((1, 2, 3))
    area = near.mean((1, 2, 3))
    assert float((share / area).median()) > 2.0 and float(share.median()) > 0.5


@pytest.mark.parametrize("weights", SHIPPED)
def test_shipped_scores_prefer_clean_clips(weights):
    rm = build_reward("shapes", weights=weights)
    v, prompts, attrs = WORLD.clips("test", range(32))
    with torch.no_grad():
        clean = rm(v, prompts)
        blurred = rm(blur(v, 3), prompts)
        wrong = rm(WORLD.render(wrong_attributes(attrs, 2, torch.Generator().manual_seed(1)), WORLD.attributes("test", range(32))[1]), prompts)
    assert (clean.z["vq"] > blurred.z["vq"]).float().mean() > 0.9
    assert (clean.z["ta"] > wrong.z["ta"]).float().mean() > 0.9
    # z-normalised against clips of mixed quality: clean ones sit above 0 on every axis, on a sane scale
    for ax in ("vq", "mq", "ta"):
        assert 0 < float(clean.z[ax].mean()) < 3, ax
    assert -10 < float(wrong.z["ta"].mean()) < 0
