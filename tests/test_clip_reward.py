import torch

from rewards.clip import ClipReward


def _tiny_clip():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=64),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return ClipReward(model.eval(), open_clip.get_tokenizer("ViT-B-32"), 64)


def test_clip_scores_match_hand_computation_and_reach_pixels():
    r = _tiny_clip()
    g = torch.Generator().manual_seed(1)
    v = torch.rand(2, 3, 3, 32, 32, generator=g).requires_grad_(True)
    prompts = ["a small red square moving left", "a large blue circle"]
    s = r(v, prompts)
    with torch.no_grad():  # recompute frame by frame
        img = torch.nn.functional.normalize(r.clip.encode_image(r._frames(v[:1])), dim=-1)
        txt = torch.nn.functional.normalize(r.clip.encode_text(r.tokenizer(prompts[:1])), dim=-1)
    assert torch.allclose(s.raw["ta"][0], 100 * (img @ txt.T).mean(), atol=1e-4)
    assert torch.allclose(s.raw["mq"][0], (img[1:] * img[:-1]).sum(-1).mean(), atol=1e-5)
    for a in ("mq", "ta"):
        (grad,) = torch.autograd.grad(s.raw[a].sum(), v, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert set(s.z) == {"mq", "ta"}
