"""Samplers against an independent implementation (diffusers) and against closed-form optimal denoisers."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from conftest import gaussian_posterior_mean, oracle_denoiser
from ddpmkit.samplers import SAMPLERS, ImageNoise, sample_ddim, sample_ddpm, sample_deterministic, spaced_timesteps
from ddpmkit.config import DEFAULT_STEPS
from ddpmkit.schedule import NoiseSchedule, cosine_beta_schedule, linear_beta_schedule, posterior

DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


class ToyDenoiser(nn.Module):
    """A fixed random function of (x, t), per image, independent of ddpmkit's U-Net."""

    def __init__(self, channels: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * (0.5 + t.float()[:, None, None, None] / 100)


def assert_same_samples(ours, expected):
    """Equal to float32 precision, relative to the samples' scale (unclipped x_0 can reach 1e3 at t = T)."""
    error = (ours - expected).abs().max().item()
    assert error <= 2e-4 + 2e-5 * expected.abs().max().item(), error


@torch.no_grad()
def _diffusers_loop(scheduler, model, x_T, seeds, step_kwargs):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    # The initial noise comes from the same generators first, as ImageNoise.from_seeds(...).randn does.
    x = torch.cat([torch.randn((1, *x_T.shape[1:]), generator=g) for g in gens])
    assert torch.equal(x, x_T)
    for t in scheduler.timesteps:
        out = model(x, torch.full((len(x),), int(t)))
        x = scheduler.step(out, t, x, generator=gens, **step_kwargs).prev_sample
    return x


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is the optional reference implementation")


def _setup(T=50, schedule="linear"):
    betas = linear_beta_schedule(T, 1e-4, 0.2) if schedule == "linear" else cosine_beta_schedule(T)
    seeds = [3, 1, 4, 1000]
    noise = ImageNoise.from_seeds(seeds)
    x_T = noise.randn((4, 2, 6, 6))
    return NoiseSchedule(betas), betas, seeds, noise, x_T


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("steps,spacing", [(None, "trailing"), (10, "trailing"), (10, "leading"), (7, "linspace")])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_matches_diffusers(diffusers, prediction, variance, steps, spacing, clip):
    if variance == "beta" and steps and spacing == "trailing":
        pytest.skip("diffusers adds noise at the last step whenever it is not t = 0 (with beta_t, not zero), unlike "
                    "DDPM Algorithm 2 (z = 0 at the last step), and trailing steps end at t = T / S - 1")
    sched, betas, seeds, noise, x_T = _setup()
    model = ToyDenoiser()
    ours = sample_ddpm(model, sched, x_T.clone(), steps=steps, prediction=prediction, variance=variance,
                       clip_range=(-1, 1) if clip else None, spacing=spacing, noise=noise, progress=False)
    ref = diffusers.DDPMScheduler(num_train_timesteps=len(betas), trained_betas=betas.float().numpy(),
                                  variance_type="fixed_small" if variance == "posterior" else "fixed_large",
                                  clip_sample=clip, prediction_type=DIFFUSERS_PREDICTION[prediction],
                                  timestep_spacing=spacing)
    ref.set_timesteps(steps or len(betas))
    expected = _diffusers_loop(ref, model, x_T, seeds, {})
    assert_same_samples(ours, expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])  # diffusers' DDIM steps by T // S: no linspace
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_matches_diffusers(diffusers, prediction, eta, steps, spacing, clip):
    sched, betas, seeds, noise, x_T = _setup(schedule="cosine")
    model = ToyDenoiser()
    ours = sample_ddim(model, sched, x_T.clone(), steps=steps, eta=eta, prediction=prediction,
                       clip_range=(-1, 1) if clip else None, spacing=spacing, noise=noise, progress=False)
    ref = diffusers.DDIMScheduler(num_train_timesteps=len(betas), trained_betas=betas.float().numpy(),
                                  clip_sample=clip, set_alpha_to_one=True,
                                  prediction_type=DIFFUSERS_PREDICTION[prediction], timestep_spacing=spacing)
    ref.set_timesteps(steps)
    expected = _diffusers_loop(ref, model, x_T, seeds, {"eta": eta, "use_clipped_model_output": clip})
    assert_same_samples(ours, expected)


def test_deterministic_is_ddim_eta0_over_all_steps():
    sched, _, _, noise, x_T = _setup()
    model = ToyDenoiser()
    a = sample_deterministic(model, sched, x_T.clone(), progress=False)
    b = sample_ddim(model, sched, x_T.clone(), steps=None, eta=0.0, progress=False)
    assert torch.equal(a, b)


def test_a_respaced_ddpm_step_draws_from_the_schedules_posterior():
    # From t to the next visited s (not t - 1): x_s = coef_x0 x_0 + coef_xt x_t + sqrt(tilde-beta) z, the schedule's
    # posterior between the two, at the predicted x_0 and with z the image's next draw.
    sched, _, seeds, noise, x_T = _setup()
    seen = []
    sample_ddpm(ToyDenoiser(), sched, x_T, steps=3, noise=noise, on_step=lambda *state: seen.append(state),
                progress=False)
    (t, x_t, x0), (s, x_s, _) = seen[:2]
    q = posterior(sched.alphas_cumprod_float64[t], sched.alphas_cumprod_float64[s])
    again = ImageNoise.from_seeds(seeds)
    again.randn(x_T.shape)  # x_T came first from the same generators
    expected = float(q.coef_x0) * x0 + float(q.coef_xt) * x_t + float(q.variance) ** 0.5 * again.randn(x_T.shape)
    assert t - s > 1
    torch.testing.assert_close(x_s, expected)


def test_every_samplers_default_steps_are_the_table():
    # One place for the default step counts: a sampler called without steps takes DEFAULT_STEPS[name] (None: all T).
    for name, fn in SAMPLERS.items():
        assert inspect.signature(fn).parameters["steps"].default == DEFAULT_STEPS.get(name), name


def test_spaced_timesteps():
    assert spaced_timesteps(10, None) == list(range(9, -1, -1))
    assert spaced_timesteps(1000, 50, "leading") == list(range(980, -1, -20))  # DDIM's linear sub-sequence tau
    assert spaced_timesteps(1000, 50) == list(range(999, 0, -20))  # trailing, the default: starts at T - 1
    assert spaced_timesteps(10, 3, "linspace") == [9, 4, 0]  # round(4.5) = 4 (round half to even)
    with pytest.raises(ValueError):
        spaced_timesteps(10, 11)
    with pytest.raises(ValueError, match="unknown spacing 'even'"):
        spaced_timesteps(10, 3, "even")


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("T,steps", [(1000, 10), (1000, 50), (1000, 7), (1000, 600), (50, 10), (10, 3)])
def test_spacings_are_diffusers_timestep_spacings(diffusers, spacing, T, steps):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert spaced_timesteps(T, steps, spacing) == ref.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_logsnr_and_karras_spacings_are_uniform_in_their_variable(spacing):
    sched = NoiseSchedule(linear_beta_schedule(1000))
    abar = sched.alphas_cumprod_float64
    steps = spaced_timesteps(1000, 20, spacing, abar)
    assert steps[0] == 999 and steps[-1] == 0 and steps == sorted(set(steps), reverse=True)
    sigma = ((1 - abar) / abar).sqrt()
    level = (abar / (1 - abar)).log() if spacing == "logsnr" else sigma ** (1 / 7)
    gaps = (level[steps[1:]] - level[steps[:-1]]).abs()
    # Even gaps up to rounding to whole timesteps: much closer to uniform than trailing's.
    trailing = spaced_timesteps(1000, 20)
    trailing_gaps = (level[trailing[1:]] - level[trailing[:-1]]).abs()
    assert gaps.std() / gaps.mean() < 0.1 < trailing_gaps.std() / trailing_gaps.mean()


# -- closed-form optimal denoisers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_sampler_recovers_a_point_mass(name, prediction):
    # Data = one image x*: E[x_0 | x_t] = x*, so every sampler must end exactly at x*.
    sched = NoiseSchedule(linear_beta_schedule(100, 1e-4, 0.1))
    target = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)
    model = oracle_denoiser(sched, prediction, lambda x, t: target.expand_as(x))
    noise = ImageNoise.from_seeds(range(3))
    out = SAMPLERS[name](model, sched, noise.randn((3, 1, 4, 4)), steps=20 if name != "deterministic" else None,
                         prediction=prediction, clip_range=None, noise=noise, progress=False)
    assert torch.allclose(out, target.expand_as(out), atol=1e-4)


@pytest.mark.parametrize("sampler,steps,tolerance", [("ddpm", None, 0.03), ("deterministic", None, 0.03),
                                                     ("ddim", 200, 0.03), ("ddim", 50, 0.07)])
def test_samplers_reproduce_gaussian_data(sampler, steps, tolerance):
    # Data ~ N(0, s^2 I): E[x_0 | x_t] = sqrt(abar) s^2 / (abar s^2 + 1 - abar) x_t. Sampling with this exact
    # denoiser must give images whose pixels have standard deviation s (up to discretisation and sample noise;
    # DDIM is a first-order solver, so 50 steps land measurably short: 0.474 here, 200 steps within 3%).
    s = 0.5
    sched = NoiseSchedule(linear_beta_schedule(1000))
    model = oracle_denoiser(sched, "eps", gaussian_posterior_mean(sched, 0.0, s))
    torch.manual_seed(0)
    out = SAMPLERS[sampler](model, sched, torch.randn(64, 1, 16, 16), steps=steps, clip_range=None, progress=False)
    assert out.mean().abs().item() < 0.02
    assert out.std().item() == pytest.approx(s, rel=tolerance)


def test_samples_do_not_depend_on_the_batch():
    sched, _, _, _, _ = _setup()
    model = ToyDenoiser()
    seeds = [10, 11, 12, 13]
    full_noise = ImageNoise.from_seeds(seeds)
    full = sample_ddpm(model, sched, full_noise.randn((4, 2, 6, 6)), noise=full_noise, steps=10, progress=False)
    half_noise = ImageNoise.from_seeds(seeds[2:])
    half = sample_ddpm(model, sched, half_noise.randn((2, 2, 6, 6)), noise=half_noise, steps=10, progress=False)
    assert torch.allclose(full[2:], half, atol=1e-6)
