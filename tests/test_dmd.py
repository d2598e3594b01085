import torch

from distill.dmd import dmd_gradient, dmd_loss, sample_dmd_sigma
from distill.rollout import self_forcing_rollout

from tiny import tiny_video_model


def test_dmd_gradient_hand_computed():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).reshape(2, 1, 2, 1, 1)
    x_real = torch.tensor([[0.0, 0.0], [1.0, 3.0]]).reshape(2, 1, 2, 1, 1)
    x_fake = torch.tensor([[3.0, 1.0], [2.0, 2.0]]).reshape(2, 1, 2, 1, 1)
    g = dmd_gradient(x, x_real, x_fake)
    # sample 0: norm = mean(|1|,|2|) = 1.5 -> (3, 1) / 1.5; sample 1: norm = mean(1, 3) = 2 -> (1, -1) / 2
    assert torch.allclose(g.flatten(1), torch.tensor([[2.0, 2 / 3], [0.5, -0.5]]))
    # x == x_real gives 0/0 -> nan_to_num -> 0
    assert torch.equal(dmd_gradient(x_real, x_real, x_fake), torch.zeros_like(x))


def test_dmd_loss_value_and_gradient():
    x = torch.tensor([1.0, -2.0, 0.5, 4.0]).reshape(2, 1, 2, 1, 1).requires_grad_()
    g = torch.tensor([0.2, -0.4, 1.0, 0.0]).reshape(2, 1, 2, 1, 1)
    loss = dmd_loss(x, g)
    assert torch.allclose(loss, 0.5 * (g**2).mean())
    loss.backward()
    assert torch.allclose(x.grad, g / g.numel())  # d/dx 0.5 mean((x - sg(x-g))^2) = g / N
    # unit weights change nothing; rollout weights scale each rollout's share
    x.grad = None
    w = torch.tensor([2.0, 0.0])
    dmd_loss(x, g, torch.ones_like(x), w).backward()
    assert torch.allclose(x.grad[0], 2 * g[0] / g.numel()) and torch.equal(x.grad[1], torch.zeros_like(g[1]))


def test_dmd_sigma_range():
    s = sample_dmd_sigma(1000, 3.0, 20.0, 980.0, torch.Generator().manual_seed(0))
    assert float(s.min()) >= 0.02 - 1e-6 and float(s.max()) <= 0.98 + 1e-6


def test_only_the_exit_step_pass_keeps_gradients():
    student = tiny_video_model(streaming=True)
    student.requires_grad_(False)
    student.dit.requires_grad_(True)
    text = student.encode_text(["a small red square moving left slowly on a dark background"] * 2)
    noise = torch.randn(student.latent_shape(2, 6), generator=torch.Generator().manual_seed(0))
    calls = []
    orig = student.predict_x0_streaming

    def spy(x, sigma, text_, cache):
        out = orig(x, sigma, text_, cache)
        calls.append((sigma, out.requires_grad, cache.k[0] is None or not cache.k[0].requires_grad))
        return out

    student.predict_x0_streaming = spy
    roll = self_forcing_rollout(student, text, noise, exit_step=2, generator=torch.Generator().manual_seed(1))
    sig = student.streaming_sigmas()
    # 2 chunks x (2 no-grad steps + 1 exit step)
    assert [c[0] for c in calls] == [sig[0], sig[1], sig[2]] * 2
    assert [c[1] for c in calls] == [False, False, True] * 2
    assert all(c[2] for c in calls)  # the cache never carries gradient
    roll.latents.sum().backward()
    assert student.dit.head.weight.grad is not None and student.dit.head.weight.grad.abs().sum() > 0


def test_rollout_at_last_exit_equals_streaming_sample():
    student = tiny_video_model(streaming=True)
    prompts = ["a large blue circle moving up quickly on a light background"]
    noise = torch.randn(student.latent_shape(1, 6), generator=torch.Generator().manual_seed(3))
    streamed = torch.cat(list(student.stream(prompts, 6, torch.Generator().manual_seed(4), noise=noise)), 1)
    with torch.no_grad():
        rolled = self_forcing_rollout(student, student.encode_text(prompts), noise, 3, torch.Generator().manual_seed(4)).latents
    assert torch.allclose(streamed, rolled, atol=1e-6)
