import pytest
import torch

from genrl.models.qwen_vision import VisionPrepConfig, frame_indices, prepare_pixels, smart_nframes, smart_resize


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


def test_frame_rule_follows_the_source_frame_rate():
    # 2 frames a second of the source, at least 4, even, never more than the video has
    assert smart_nframes(81, 16.0, 2.0) == 10  # 81 frames at 16 fps: 5.06 s -> 10
    assert smart_nframes(60, 8.0, 2.0) == 16  # 7.5 s -> 15 -> rounded to an even 16
    assert smart_nframes(9, 8.0, 2.0) == 4  # short clips still read 4
    assert smart_nframes(3, 8.0, 2.0) == 2  # never more than there are
    assert frame_indices(9, 8.0, VisionPrepConfig()) == [0, 3, 5, 8]
    with pytest.raises(ValueError):
        smart_nframes(1, 8.0, 2.0)


def test_videoreward_scores_are_differentiable_to_pixels(tmp_path):
    from rewards.videoalign import convert
    from rewards.videoreward import videoreward

    from tiny_videoalign import write_release

    write_release(tmp_path)
    rm = videoreward(weights=str(convert(tmp_path / "release", tmp_path / "c", tmp_path / "base",
                                         template_file=str(tmp_path / "template.txt"))), dtype="float32")
    v = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    s = rm(v, ["a red square moving left", "a blue circle"])
    assert set(s.raw) == {"vq", "mq", "ta"} and s.raw["vq"].shape == (2,)
    for a in ("vq", "mq", "ta"):
        (g,) = torch.autograd.grad(s.raw[a].sum(), v, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    s2 = rm(v.detach(), ["a green triangle moving up", "a blue circle"])  # the prompt reaches the TA score
    assert not torch.isclose(s.raw["ta"][0], s2.raw["ta"][0])


def test_checkpointed_saliency_pass_gives_the_same_maps_keeping_less(tmp_path):
    """Stream-R1's saliency pass with train.activation_checkpointing: the reward keeps only each vision block's and
    decoder layer's input and runs it again in backward; the same scores and saliency maps, fewer saved bytes. The
    trainer turns it on for a frozen role that keeps a graph (Role.graph), not for other frozen roles."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from genrl.memory import tally
    from genrl.train.trainer import Role, TrainConfig, place_roles
    from rewards.videoalign import convert
    from rewards.videoreward import videoreward

    from tiny_videoalign import write_release

    write_release(tmp_path)
    folder = str(convert(tmp_path / "release", tmp_path / "c", tmp_path / "base", template_file=str(tmp_path / "template.txt")))
    v = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red square moving left", "a blue circle"]
    plain, checkpointed, other = (videoreward(weights=folder, dtype="float32") for _ in range(3))
    place_roles({"reward": Role(checkpointed, graph=True), "other": Role(other), "trained": Role(plain, trainable=True)},
                torch.device("cpu"), TrainConfig(activation_checkpointing=True, frozen_dtype="float32"))
    wrapped = {n: any(isinstance(m, CheckpointWrapper) for m in r.modules())
               for n, r in (("reward", checkpointed), ("other", other), ("trained", plain))}
    assert wrapped == {"reward": True, "other": False, "trained": True}
    plain = videoreward(weights=folder, dtype="float32")  # unwrapped, to compare against
    runs = {}
    for name, rm in (("plain", plain), ("checkpointed", checkpointed)):
        out = []
        kept = tally(lambda: out.append(rm.scores_and_saliency(v, prompts)), []).total  # noqa: B023
        runs[name] = (*out[0], kept)
    (s0, m0, k0), (s1, m1, k1) = runs["plain"], runs["checkpointed"]
    assert all(torch.equal(s0.raw[a], s1.raw[a]) for a in s0.raw)
    assert all(torch.allclose(m0[a], m1[a], atol=1e-7) and m0[a].abs().sum() > 0 for a in m0)
    assert k1 < k0  # measured 23.1 against 29.1 MB on this tiny model
