import pytest
import torch

from rewards.videoreward import VideoRewardConfig, VideoRewardModel, VisionPrepConfig, prepare_pixels, smart_resize

from tiny_qwen import tiny_qwen2vl


def _processor(min_pixels, max_pixels):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})


@pytest.mark.parametrize("hw, tol", [((56, 84), 1e-5), ((60, 90), 0.03)])
def test_torch_preprocessing_matches_the_transformers_processor(hw, tol):
    # no resize: identical; with a resize the processor rounds its resized frames to uint8,
    # which is worth at most ~1/255 per pixel (0.015 after CLIP normalisation) plus bicubic nuance
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 12, generator=g), size=hw, mode="bilinear")
    frames = (smooth * 255).round().to(torch.uint8)
    proc = _processor(56 * 56, 112 * 112)
    ref = proc(videos=[frames], return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=False)
    ours, grid = prepare_pixels(frames.float() / 255, VisionPrepConfig(min_pixels=56 * 56, max_pixels=112 * 112))
    assert torch.equal(grid, ref["video_grid_thw"])
    assert ours.shape == ref["pixel_values_videos"].shape
    assert (ours - ref["pixel_values_videos"]).abs().max() < tol


def test_smart_resize_rules():
    assert smart_resize(56, 84, 28, 56 * 56, 112 * 112) == (56, 84)
    h, w = smart_resize(1080, 1920, 28, 128 * 784, 448 * 448)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 448 * 448
    h, w = smart_resize(20, 20, 28, 56 * 56, 10**6)
    assert h * w >= 56 * 56


def test_videoreward_scores_are_differentiable_to_pixels():
    model, tok = tiny_qwen2vl()
    rm = VideoRewardModel(model, tok, VideoRewardConfig(vision=VisionPrepConfig(min_pixels=56 * 56, max_pixels=112 * 112)))
    v = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    s = rm(v, ["a red square moving left", "a blue circle"])
    assert set(s.raw) == {"vq", "mq", "ta"} and s.raw["vq"].shape == (2,)
    for a in ("vq", "mq", "ta"):
        (g,) = torch.autograd.grad(s.raw[a].sum(), v, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the prompt reaches the TA score
    s2 = rm(v.detach(), ["a green triangle moving up", "a blue circle"])
    assert not torch.isclose(s.raw["ta"][0], s2.raw["ta"][0])
