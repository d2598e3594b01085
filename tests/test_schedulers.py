import math

import torch

from genrl import schedulers as fm


def test_shift_closed_form_and_endpoints():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    got = fm.shift_sigma(s, 5.0)
    want = torch.tensor([0.0, 5 * 0.25 / (1 + 4 * 0.25), 5 * 0.5 / (1 + 4 * 0.5), 1.0])
    assert torch.allclose(got, want)
    assert math.isclose(float(fm.shift_sigma(0.5, 5.0)), 2.5 / 3.0)
    assert torch.equal(fm.shift_sigma(s, 1.0), s)


def test_self_forcing_timesteps():
    # Self-Forcing's 4-step list [1000, 750, 500, 250] with shift 5
    got = fm.sigmas_from_timesteps([1000, 750, 500, 250], 5.0)
    want = [1.0, 3.75 / 4.0, 2.5 / 3.0, 1.25 / 2.0, 0.0]
    assert torch.allclose(got, torch.tensor(want))


def test_x0_velocity_round_trip_and_noise():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    xt = fm.add_noise(x0, eps, sigma)
    assert torch.allclose(xt[0], 0.7 * x0[0] + 0.3 * eps[0])
    v = fm.velocity_target(x0, eps)
    assert torch.allclose(fm.x0_from_velocity(xt, v, sigma), x0, atol=1e-6)
    assert torch.allclose(fm.velocity_from_x0(xt, x0, sigma), v, atol=1e-5)
    # per-frame sigma broadcasts over (B, F)
    sf = torch.rand(2, 3, generator=g)
    assert torch.allclose(fm.add_noise(x0, eps, sf)[1, 2], (1 - sf[1, 2]) * x0[1, 2] + sf[1, 2] * eps[1, 2])


def test_euler_with_exact_velocity_recovers_x0_in_any_number_of_steps():
    # on a straight path x_t = (1-s) x0 + s eps, the true velocity is constant: Euler is exact
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 2, 4, 4, 4, generator=g)
    for steps in (1, 3, 50):
        sig = fm.sampling_sigmas(steps, 3.0)
        x = eps.clone()
        for s, s_next in zip(sig[:-1], sig[1:]):
            x = fm.euler_step(x, fm.velocity_target(x0, eps), s, s_next)
        assert torch.allclose(x, x0, atol=1e-5)


def test_sampler_on_a_gaussian_with_known_answer():
    # data ~ N(mu, 0): the optimal velocity is v = (x - mu) / s (straight lines to mu); sampling lands on mu
    mu = torch.tensor(2.5)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    sig = fm.sampling_sigmas(20, 3.0)
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist()):
        v = (x - mu) / s
        x = fm.euler_step(x, v, s, s_next)
    assert torch.allclose(x, mu.expand_as(x), atol=1e-4)


def test_cfg_formula():
    vu, vc = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(fm.cfg(vu, vc, 1.0), vc)
    assert torch.equal(fm.cfg(vu, vc, 0.0), vu)
    assert torch.allclose(fm.cfg(vu, vc, 3.0), torch.tensor([7.0, 4.0]))


def test_training_sigmas_are_shifted_logit_normal_draws():
    """sigma = s u / (1 + (s - 1) u) with u = sigmoid(N(0, 1)): checked draw by draw and by its quantiles."""
    import math

    from genrl.schedulers import sample_training_sigma

    g = torch.Generator().manual_seed(5)
    n = torch.randn(4, generator=g)
    sig = sample_training_sigma(4, 3.0, torch.Generator().manual_seed(5))
    u = torch.sigmoid(n)
    torch.testing.assert_close(sig, 3.0 * u / (1 + 2.0 * u))
    uni = sample_training_sigma(4, 1.0, torch.Generator().manual_seed(5), logit_normal=False)
    torch.testing.assert_close(uni, torch.rand(4, generator=torch.Generator().manual_seed(5)))
    big = sample_training_sigma(200_000, 1.0, torch.Generator().manual_seed(0))
    # logit-normal(0, 1): median 0.5, and P(sigma < sigmoid(1)) = Phi(1) = 0.8413
    assert abs(float(big.median()) - 0.5) < 0.005
    assert abs(float((big < 1 / (1 + math.exp(-1))).float().mean()) - 0.8413) < 0.005
    shifted = sample_training_sigma(200_000, 3.0, torch.Generator().manual_seed(0))
    assert abs(float(shifted.median()) - 0.75) < 0.005  # the shift moves the median 0.5 to 3 * 0.5 / 2 = 0.75


def test_sampling_sigmas_by_hand():
    import pytest

    from genrl.schedulers import sampling_sigmas

    torch.testing.assert_close(sampling_sigmas(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    # shift 3: 3 s / (1 + 2 s) at s = 1, 0.5, 0 -> 1, 0.75, 0
    torch.testing.assert_close(sampling_sigmas(2, 3.0), torch.tensor([1.0, 0.75, 0.0]))
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        sampling_sigmas(0, 1.0)


def test_sigmas_take_the_samples_dtype_whatever_their_own():
    from genrl import schedulers as fm

    x = torch.ones(2, 3, 1, 2, 2, dtype=torch.bfloat16)
    sigma = torch.tensor([0.25, 0.5], dtype=torch.float64)
    out = fm.add_noise(x, torch.zeros_like(x), sigma)
    assert out.dtype == torch.bfloat16 and torch.equal(out[:, 0, 0, 0, 0], torch.tensor([0.75, 0.5], dtype=torch.bfloat16))
    assert fm.x0_from_velocity(x, torch.ones_like(x), sigma).dtype == torch.bfloat16
