"""DDIM inversion against the probability-flow ODE's closed form for Gaussian data, and as the decoder's inverse."""
import math

import pytest
import torch

from conftest import gaussian_posterior_mean, oracle_denoiser
from ddpmkit.samplers import invert_ddim, sample_ddim
from ddpmkit.schedule import NoiseSchedule, linear_beta_schedule

MEAN, STD = 0.3, 0.5


def gaussian_setup(prediction="eps"):
    sched = NoiseSchedule(linear_beta_schedule(1000))
    return sched, oracle_denoiser(sched, prediction, gaussian_posterior_mean(sched, MEAN, STD))


def data(n=32, seed=0):
    return MEAN + STD * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def decode(model, sched, latents, steps, prediction="eps"):
    return sample_ddim(model, sched, latents, steps=steps, eta=0.0, prediction=prediction, clip_range=None,
                       progress=False)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_inversion_follows_the_exact_ode_for_gaussian_data(prediction):
    # For data ~ N(m, s^2), the probability-flow ODE carries x_0 to x_t = sqrt(abar_t) m +
    # sqrt(abar_t s^2 + 1 - abar_t) (x_0 - m) / s: the latent is the data point's standard score, rescaled.
    sched, model = gaussian_setup(prediction)
    x_0 = data()
    latents = invert_ddim(model, sched, x_0, steps=None, prediction=prediction, progress=False)
    abar_T = float(sched.alphas_cumprod[-1])
    exact = math.sqrt(abar_T) * MEAN + math.sqrt(abar_T * STD**2 + 1 - abar_T) * (x_0 - MEAN) / STD
    assert (latents - exact).abs().max() < 0.005 * exact.abs().max()  # 1,000 Euler steps: 0.0026 here
    assert latents.std().item() == pytest.approx(1.0, abs=0.1)   # the inversion reaches the N(0, I) prior


def test_reconstruction_error_falls_with_more_steps():
    sched, model = gaussian_setup()
    x_0 = data()
    errors = []
    for steps in (5, 20, 100, 1000):
        rebuilt = decode(model, sched, invert_ddim(model, sched, x_0, steps=steps, progress=False), steps)
        errors.append((rebuilt - x_0).pow(2).mean().sqrt().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01, errors


def test_refined_inversion_is_the_decoders_exact_inverse():
    # With the fixed point solved, decoding with the same few steps returns the image up to float error.
    sched, model = gaussian_setup()
    x_0 = data()
    plain = decode(model, sched, invert_ddim(model, sched, x_0, steps=5, progress=False), 5)
    exact = decode(model, sched, invert_ddim(model, sched, x_0, steps=5, refine=30, progress=False), 5)
    assert (plain - x_0).abs().max() > 0.5       # five Euler steps alone are far from the inverse (1.46)
    assert (exact - x_0).abs().max() < 1e-4


def test_refine_must_not_be_negative():
    sched, model = gaussian_setup()
    with pytest.raises(ValueError, match="refine"):
        invert_ddim(model, sched, data(2), steps=5, refine=-1, progress=False)
