"""The noise schedule against closed forms (DDPM eqs. 4, 6, 7; IDDPM eq. 17; Salimans & Ho 2022)."""
import math

import numpy as np
import pytest
import torch

from ddpmkit.build import noise_schedule
from ddpmkit.config import ConfigError, DiffusionConfig, validate
from ddpmkit.schedule import NoiseSchedule, cosine_beta_schedule, linear_beta_schedule, posterior


def test_linear_schedule_matches_ddpm_endpoints():
    betas = linear_beta_schedule(1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_linear_schedule_ends_near_pure_noise():
    # DDPM §4: with these betas, L_T = KL(q(x_T|x_0) || N(0, I)) ~ 1e-5 bits/dim, i.e. abar_T ~ 4e-5.
    abar_T = torch.prod(1 - linear_beta_schedule(1000)).item()
    assert abar_T == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_alpha_bar_is_the_closed_form():
    T, s = 1000, 0.008
    abar = torch.cumprod(1 - cosine_beta_schedule(T, s), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 250, 500, 750, 900, 990):  # before the 0.999 clip takes effect
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cosine_beta_schedule(T, s).max().item() == pytest.approx(0.999)


def test_posterior_matches_equation_7():
    sched = NoiseSchedule(linear_beta_schedule(50))
    b = sched.betas_float64
    abar = torch.cumprod(1 - b, 0)
    for t in (1, 10, 49):
        expected = b[t] * (1 - abar[t - 1]) / (1 - abar[t])
        assert sched.posterior_variance[t].item() == pytest.approx(expected.item(), rel=1e-5)
    assert sched.posterior_variance[0].item() == 0.0  # q(x_0 | x_1, x_0) is a point mass


def test_posterior_mean_is_exact_for_gaussian_product():
    # q(x_{t-1}|x_t, x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): check the mean against a brute-force 1-D product.
    sched = NoiseSchedule(cosine_beta_schedule(20))
    t = torch.tensor([7])
    x0, xt = torch.tensor([[0.3]]), torch.tensor([[-0.8]])
    b = sched.betas_float64[7].item()
    abar_prev = torch.cumprod(1 - sched.betas_float64, 0)[6].item()
    # product of N(x; sqrt(abar_prev) x0, 1-abar_prev) and N(xt; sqrt(1-b) x, b) as a Gaussian in x
    prec = 1 / (1 - abar_prev) + (1 - b) / b
    mean = (math.sqrt(abar_prev) * 0.3 / (1 - abar_prev) + math.sqrt(1 - b) * -0.8 / b) / prec
    got_mean, got_var = sched.q_posterior(x0, xt, t)
    assert got_mean.item() == pytest.approx(mean, rel=1e-5)
    assert got_var.item() == pytest.approx(1 / prec, rel=1e-5)


@pytest.mark.parametrize("t,s", [(7, 6), (9, 3), (4, 0)])
def test_posterior_between_any_two_steps_is_the_gaussian_product(t, s):
    # q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0) with q(x_t | x_s) = N(sqrt(a) x_s, 1 - a), a = abar_t / abar_s:
    # DDPM eqs. 6-7 between adjacent steps, and between the non-adjacent ones of a respaced sampler (IDDPM §4).
    abar = NoiseSchedule(cosine_beta_schedule(10)).alphas_cumprod_float64
    abar_t, abar_s = abar[t].item(), abar[s].item()
    x0, xt, a = 0.3, -0.8, abar_t / abar_s
    prec = 1 / (1 - abar_s) + a / (1 - a)
    mean = (math.sqrt(abar_s) * x0 / (1 - abar_s) + math.sqrt(a) * xt / (1 - a)) / prec
    q = posterior(abar_t, abar_s)
    assert (q.coef_x0 * x0 + q.coef_xt * xt).item() == pytest.approx(mean, rel=1e-12)
    assert q.variance.item() == pytest.approx(1 / prec, rel=1e-12)
    assert q.beta.item() == pytest.approx(1 - a, rel=1e-12)
    to_x0 = posterior(abar_t, 1.0)  # the last step, to x_0 itself: a point mass at x_0
    assert (to_x0.coef_x0.item(), to_x0.coef_xt.item(), to_x0.variance.item()) == (1.0, 0.0, 0.0)


def test_q_sample_moments():
    sched = NoiseSchedule(linear_beta_schedule(1000))
    x0 = torch.full((200_000,), 0.7)
    for step in (0, 100, 999):
        t = torch.full((len(x0),), step)
        xt = sched.q_sample(x0, t, torch.randn_like(x0))
        abar = torch.cumprod(1 - sched.betas_float64, 0)[step].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.02, abs=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_invert_the_forward_process(prediction):
    sched = NoiseSchedule(cosine_beta_schedule(100))
    x0, noise = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = torch.arange(0, 100, 13)[:8]
    xt = sched.q_sample(x0, t, noise)
    target = sched.training_target(prediction, x0, t, noise)
    got_x0, got_eps = sched.x0_and_eps(prediction, target, xt, t)
    assert torch.allclose(got_x0, x0, atol=1e-4)
    assert torch.allclose(got_eps, noise, atol=1e-3)


def test_v_is_defined_as_in_salimans_and_ho():
    sched = NoiseSchedule(linear_beta_schedule(10))
    x0, noise, t = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 4, 9])
    abar = torch.cumprod(1 - sched.betas_float64, 0)[t].float()[:, None]
    assert torch.allclose(sched.velocity(x0, t, noise), abar.sqrt() * noise - (1 - abar).sqrt() * x0, atol=1e-6)


def test_bad_betas_are_refused():
    with pytest.raises(ValueError):
        NoiseSchedule(torch.tensor([0.1, 1.2]))


@pytest.mark.parametrize("T", [50, 100, 1000, 4000])
def test_a_named_linear_schedule_has_one_constructor_which_scales_by_1000_over_t(T):
    # issue 24.11: NoiseSchedule.from_name("linear", T) kept the T = 1000 betas unscaled while build.noise_schedule
    # scaled them by 1000 / T; build.noise_schedule, from the config, is now the only constructor from a name.
    assert not hasattr(NoiseSchedule, "from_name")
    scale = 1000 / T  # IDDPM's get_named_beta_schedule("linear", T), written out
    reference = torch.from_numpy(np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64))
    torch.testing.assert_close(noise_schedule(DiffusionConfig(num_timesteps=T)).betas_float64, reference,
                               rtol=1e-12, atol=0)


def test_the_config_refuses_a_linear_schedule_where_its_scaled_betas_would_reach_one():
    # The config's check and the constructor scale by the same rule: beta_end = 0.02 reaches 1 at T = 20.
    from ddpmkit.config import Config, TrainConfig

    def config(T: int) -> Config:
        return Config(diffusion=DiffusionConfig(num_timesteps=T), train=TrainConfig(grid_steps=T))

    with pytest.raises(ConfigError, match="1000/T"):
        validate(config(20))
    assert noise_schedule(validate(config(21)).diffusion).betas_float64.max().item() == pytest.approx(20 / 21)
