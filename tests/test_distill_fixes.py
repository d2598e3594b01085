"""Maths of the distillation step checked against independent computations.

Each test here failed on the code before its fix: text keys/values cached by a
no-grad pass, clamping the DMD timestep before the shift, a critic trained at
other noise levels than DMD queries, guidance in another convention than the
anchors', a balance penalty from a 2-step history, and a context-noise label
without the noise.
"""

import math

import pytest
import torch

from distill.dmd import DMDConfig, DMDMethod, sample_dmd_sigma
from distill.rollout import self_forcing_rollout
from distill.stream_r1 import balance_penalty, combined_reward
from genrl import schedulers as fm
from genrl.methods.common import OptimConfig
from genrl.models.video_model import StreamingConfig
from genrl.worlds.shapes import ShapesWorld, WorldConfig

from tiny import tiny_video_model

PROMPT = "a small red square moving left slowly on a dark background"


@pytest.mark.parametrize("exit_step", [0, 1, 2, 3])
def test_cross_attention_text_projection_learns_at_every_exit_step(exit_step):
    student = tiny_video_model(streaming=True)
    student.requires_grad_(False)
    student.dit.requires_grad_(True)
    text = student.encode_text([PROMPT] * 2)
    noise = torch.randn(student.latent_shape(2, 6), generator=torch.Generator().manual_seed(0))
    roll = self_forcing_rollout(student, text, noise, exit_step, torch.Generator().manual_seed(1))
    roll.latents.square().sum().backward()
    cross = student.dit.blocks[0].cross
    for p in (cross.kv.weight, cross.kv.bias, cross.k_norm.weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 1e-6


def test_dmd_timestep_is_shifted_then_clamped():
    s = sample_dmd_sigma(20000, 3.0, 20.0, 980.0, torch.Generator().manual_seed(0))
    assert float(s.min()) == pytest.approx(0.02) and float(s.max()) == pytest.approx(0.98)
    # shift(u) < 0.02 <=> u < 0.02 / (3 - 2 * 0.02); shift(u) > 0.98 <=> u > 0.98 / (3 - 2 * 0.98)
    low, high = 0.02 / 2.96, 1 - 0.98 / 1.04
    assert float((s == s.min()).float().mean()) == pytest.approx(low, abs=0.003)
    assert float((s == s.max()).float().mean()) == pytest.approx(high, abs=0.006)


def _dmd(**kw):
    teacher = tiny_video_model(seed=0)
    student = tiny_video_model(seed=0)
    student.cfg.streaming = StreamingConfig(enabled=True, timesteps=[1000.0, 750.0, 500.0, 250.0], local_frames=6, sink_frames=3)
    cfg = DMDConfig(**{"batch_size": 2, "critic_ratio": 1, **kw})
    return DMDMethod(cfg, student, teacher, ShapesWorld(WorldConfig(frames=6)), OptimConfig(), OptimConfig(), seed=0)


def test_critic_learns_at_the_noise_levels_dmd_queries():
    method = _dmd(batch_size=64)
    seen = []
    velocity = method.critic.velocity

    def spy(xt, sigma, *a, **k):
        seen.append(torch.as_tensor(sigma).flatten())
        return velocity(xt, sigma, *a, **k)

    method.critic.velocity = spy
    for _ in range(8):
        method.critic_loss()
    s = torch.cat(seen)
    # DMD's levels: shift 3 of uniform u, clamped to [0.02, 0.98]; sigma > 0.9 <=> u > 0.75
    assert float(s.min()) >= 0.02 - 1e-6 and float(s.max()) <= 0.98 + 1e-6
    assert float((s > 0.9).float().mean()) == pytest.approx(0.25, abs=0.05)


def test_real_score_is_cond_plus_w_times_cond_minus_uncond(monkeypatch):
    import distill.dmd as dmd_module

    method = _dmd(real_guidance=3.0)
    calls, captured = [], {}
    forward, gradient = method.teacher.dit.forward, dmd_module.dmd_gradient

    def teacher_spy(x, t, text, mask, **k):
        out = forward(x, t, text, mask, **k)
        calls.append((x, t, out))
        return out

    def gradient_spy(x, x_real, x_fake):
        captured["x_real"] = x_real
        return gradient(x, x_real, x_fake)

    monkeypatch.setattr(method.teacher.dit, "forward", teacher_spy)
    monkeypatch.setattr(dmd_module, "dmd_gradient", gradient_spy)
    method.generator_loss({})
    (xt, t, v_c), (_, _, v_u) = calls  # the teacher's two passes: prompt, then empty prompt
    sigma = (t / 1000).view(-1, 1, 1, 1, 1)
    x_c, x_u = xt - sigma * v_c, xt - sigma * v_u
    assert torch.allclose(captured["x_real"], x_c + 3.0 * (x_c - x_u), atol=1e-5)


def test_balance_penalty_waits_for_its_warmup():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    hist = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]])
    assert torch.equal(combined_reward(z, hist, 0.5, warmup=50), torch.tensor([2.0]))  # 2 steps < warm-up: no penalty
    long = torch.cat([torch.zeros(25, 3), torch.tensor([[1.0, 0.0, -1.0]]).repeat(25, 1)])
    assert float(balance_penalty(long, warmup=50)) == pytest.approx(math.sqrt(2 / 3))
    assert float(balance_penalty(long[:49], warmup=50)) == 0.0


def test_context_noise_is_added_to_the_cached_chunk():
    student = tiny_video_model(streaming=True)
    student.cfg.streaming.context_noise = 200.0
    text = student.encode_text([PROMPT])
    x0 = torch.randn(student.latent_shape(1, 3), generator=torch.Generator().manual_seed(2))
    cache = student.new_cache()
    student.write_cache(x0, text, cache, torch.Generator().manual_seed(5))
    # by hand: noise the chunk to sigma = 0.2 with the same generator, encode at t = 200
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    ref = student.new_cache()
    ref.writing = True
    with torch.no_grad():
        student.dit(fm.add_noise(x0, eps, 0.2), torch.full((1,), 200.0), *text, cache=ref)
    assert torch.allclose(cache.k[0], ref.k[0]) and torch.allclose(cache.v[0], ref.v[0])
    clean = student.new_cache()
    clean.writing = True
    with torch.no_grad():
        student.dit(x0, torch.full((1,), 200.0), *text, cache=clean)
    assert not torch.allclose(cache.k[0], clean.k[0], atol=1e-4)
