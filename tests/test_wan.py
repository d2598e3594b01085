"""Wan2.1 through diffusers' own classes, built from tiny random configs (as diffusers' Wan tests do)."""

import pytest
import torch

pytest.importorskip("diffusers")

from genrl.models.video_model import StreamingConfig
from genrl.models.wan import load_wan

from tiny_wan import tiny_wan_folder

PROMPTS = ["a small red square moving left", "a cat walking on a light background"]


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "pipe"
    pipe = tiny_wan_folder(folder)
    return folder, pipe


def _model(folder, **over):
    return load_wan(folder, {"height": 32, "width": 32, "max_text_len": 16, **over})


def _inputs(B=2, F=6, seed=1, text_len=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, 16, 4, 4, generator=g)
    t = torch.rand(B, generator=g) * 1000
    text = torch.randn(B, text_len, 32, generator=g)
    return x, t, text


def test_bidirectional_forward_equals_diffusers(wan):
    folder, pipe = wan
    m = _model(folder)
    x, t, text = _inputs()
    ours = m.dit(x, t, text)
    with torch.no_grad():
        ref = pipe.transformer(x.permute(0, 2, 1, 3, 4), t, text, return_dict=False)[0].permute(0, 2, 1, 3, 4)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_block_causal_streaming_with_cache_equals_full_block_causal_forward(wan):
    m = _model(wan[0])
    x, t, text = _inputs(F=6)
    with torch.no_grad():
        full = m.dit(x, t, text, causal=True)
        cache = m.dit.new_cache((4, 4), local_frames=6)
        cache.writing = True
        outs = [m.dit(x[:, i : i + 3], t, text, cache=cache) for i in (0, 3)]
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    # the block-causal forward ignores the future; the bidirectional one does not
    x2 = x.clone()
    x2[:, 3:] += 1.0
    with torch.no_grad():
        a, b = m.dit(x2, t, text, causal=True), m.dit(x2, t, text)
    assert torch.allclose(a[:, :3], full[:, :3], atol=1e-6) and not torch.allclose(b[:, :3], full[:, :3], atol=1e-4)


def test_per_frame_timesteps_match_diffusers_per_token_path(wan):
    folder, pipe = wan
    m = _model(folder)
    x, _, text = _inputs(F=3)
    t = torch.tensor([[900.0, 500.0, 100.0], [10.0, 20.0, 30.0]])
    ours = m.dit(x, t, text)
    with torch.no_grad():
        ref = pipe.transformer(x.permute(0, 2, 1, 3, 4), t.repeat_interleave(4, dim=1), text, return_dict=False)[0]
    assert torch.allclose(ours, ref.permute(0, 2, 1, 3, 4), atol=1e-5)


def test_text_embeddings_equal_the_pipeline(wan):
    folder, pipe = wan
    m = _model(folder)
    ours, mask = m.encode_text(PROMPTS)
    ref, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=16)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert mask.sum(1).tolist() == [6, 7] and float(ours[0, 6:].abs().sum()) == 0.0


def test_latents_decode_and_encode_like_the_pipeline(wan):
    folder, pipe = wan
    m = _model(folder)
    lat = torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        video = m.decode(lat)
        # the pipeline's own decode: latents / (1 / std) + mean, then the VAE, then [-1, 1] -> [0, 1]
        c = pipe.vae.config
        raw = lat.permute(0, 2, 1, 3, 4) * torch.tensor(c.latents_std).view(1, 16, 1, 1, 1) + torch.tensor(c.latents_mean).view(1, 16, 1, 1, 1)
        ref = pipe.vae.decode(raw, return_dict=False)[0]
        again = m.encode(video)
        ref_lat = pipe.vae.encode(video.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode()
    assert video.shape == (1, 9, 3, 32, 32)
    assert torch.allclose(video, ((ref.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4), atol=1e-5)
    ref_norm = (ref_lat - torch.tensor(c.latents_mean).view(1, 16, 1, 1, 1)) / torch.tensor(c.latents_std).view(1, 16, 1, 1, 1)
    assert again.shape == lat.shape and torch.allclose(again, ref_norm.permute(0, 2, 1, 3, 4), atol=1e-5)


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_teacher_sample_equals_wan_pipeline(tmp_path, scheduler):
    pipe = tiny_wan_folder(tmp_path / scheduler, scheduler=scheduler)
    m = _model(tmp_path / scheduler)
    noise = torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    ours = m.sample(PROMPTS[:1], 3, steps=3, guidance=4.0, noise=noise)
    out = pipe(prompt=PROMPTS[0], negative_prompt="", height=32, width=32, num_frames=9, num_inference_steps=3,
               guidance_scale=4.0, latents=noise.permute(0, 2, 1, 3, 4), output_type="latent", max_sequence_length=16)
    assert torch.allclose(ours, out.frames.permute(0, 2, 1, 3, 4), atol=1e-5)


def test_streaming_student_shares_frozen_parts_and_streams(wan):
    teacher = _model(wan[0])
    student = teacher.streaming_copy(StreamingConfig(timesteps=[1000.0, 500.0], local_frames=6, sink_frames=3))
    assert student.shared is teacher.shared and student.dit.transformer is not teacher.dit.transformer
    assert set(student.state_dict()) == {f"dit.transformer.{k}" for k in teacher.dit.transformer.state_dict()}
    noise = torch.randn(student.latent_shape(1, 6), generator=torch.Generator().manual_seed(0))
    chunks = list(student.stream(PROMPTS[:1], 6, torch.Generator().manual_seed(1), noise=noise))
    assert [c.shape[1] for c in chunks] == [3, 3] and all(torch.isfinite(c).all() for c in chunks)


def test_activation_checkpointing_gives_the_same_gradients_in_every_mode(wan):
    import copy

    m = _model(wan[0])
    ck = copy.deepcopy(m)
    ck.dit.enable_activation_checkpointing()
    m.train(), ck.train()
    x, t, text = _inputs(F=6)

    def grads(model, mode):
        model.zero_grad()
        if mode == "causal":
            out = model.dit(x, t, text, causal=True)
        else:  # the exit step of a rollout: a chunk with grad against a cache written without it
            cache = model.dit.new_cache((4, 4), local_frames=6)
            cache.writing = True
            with torch.no_grad():
                model.dit(x[:, :3], t, text, cache=cache)
            cache.writing = False
            out = model.dit(x[:, 3:], t, text, cache=cache)
            cache.writing = True
            with torch.no_grad():  # the cache moves on before backward, as the next chunk would
                model.dit(x[:, 3:], t, text, cache=cache)
        out.square().mean().backward()
        return [p.grad.clone() for p in model.dit.parameters()]

    for mode in ("causal", "cache"):
        a, b = grads(m, mode), grads(ck, mode)
        assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b)), mode
        assert sum(float(u.abs().sum()) for u in a) > 0
