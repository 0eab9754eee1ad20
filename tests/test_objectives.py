"""EDM and rectified flow: their preconditioning, losses and noise-level distributions against the papers' closed
forms and diffusers' schedulers, and their ODE samplers' order of convergence on an exact denoiser."""
import math

import pytest
import torch

from ddpmkit.objectives import EDM, RectifiedFlow
from ddpmkit.objectives.edm import NOISE_LEVEL_SCALE
from ddpmkit.objectives.flow import TIME_SCALE
from ddpmkit.samplers.continuous import integrate, sample_edm, sample_flow


class SmoothNet(torch.nn.Module):
    """A 'network' whose output is a fixed smooth function of its input and level, so every prediction differs."""

    def forward(self, x, level, y=None):
        return torch.tanh(x) * (1 + 1e-3 * level.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)) - 0.1 * x


# -- EDM ----------------------------------------------------------------------------------------------------------------

def test_edm_preconditioning_is_table_1_and_diffusers():
    from diffusers import EDMEulerScheduler

    edm, sigma = EDM(), torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma)
    sd = 0.5
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    assert torch.allclose(c_out, sigma * sd / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(c_in, 1 / torch.sqrt(sd**2 + sigma**2))
    assert torch.allclose(c_noise, torch.log(sigma) / 4)
    scheduler = EDMEulerScheduler(sigma_data=0.5)
    x, out = torch.randn(5, 1, 2, 2, dtype=torch.float64), torch.randn(5, 1, 2, 2, dtype=torch.float64)
    column = sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(c_in.reshape(-1, 1, 1, 1) * x, scheduler.precondition_inputs(x, column))
    assert torch.allclose(c_noise, scheduler.precondition_noise(sigma))
    ours = c_skip.reshape(-1, 1, 1, 1) * x + c_out.reshape(-1, 1, 1, 1) * out
    assert torch.allclose(ours, scheduler.precondition_outputs(x, out, column))


def test_edm_loss_is_eq_8s_effective_target_with_weight_one():
    # Eq. 8: lambda(sigma) ||D - y||^2 = lambda c_out^2 ||F - (y - c_skip (y + n)) / c_out||^2, and Table 1's lambda
    # makes lambda c_out^2 = 1: the network regresses its effective target with unit weight at every level.
    edm, net = EDM(), SmoothNet().double()
    x0, noise = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(6, 1, 4, 4, dtype=torch.float64)
    sigma = edm.training_sigmas(torch.linspace(0.05, 0.95, 6, dtype=torch.float64))
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in edm.preconditioning(sigma))
    x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    effective_target = (x0 - c_skip * x) / c_out
    expected = (net(c_in * x, NOISE_LEVEL_SCALE * c_noise.flatten()) - effective_target).square().mean()
    assert torch.allclose(edm.loss(net, x0, sigma, noise), expected, rtol=1e-10)
    assert torch.allclose(edm.loss_weight(sigma) * c_out.flatten() ** 2, torch.ones(6, dtype=torch.float64))


def test_edm_training_levels_are_log_normal():
    # Through the inverse CDF, evenly spread u give ln sigma with the log-normal's quantiles: mean P_mean, std P_std.
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    log_sigma = EDM(p_mean=-1.2, p_std=1.2).training_sigmas(u).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=1e-6)
    assert log_sigma.std().item() == pytest.approx(1.2, rel=1e-3)
    assert torch.all(log_sigma[1:] > log_sigma[:-1])


def test_edm_sampling_levels_are_eq_5_as_diffusers_computes_them():
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0, sigma_schedule="karras")
    scheduler.set_timesteps(18)
    assert torch.allclose(EDM().sampling_sigmas(18).float(), scheduler.sigmas.float(), rtol=1e-5)


def test_edm_euler_matches_diffusers_edm_euler_scheduler():
    from diffusers import EDMEulerScheduler

    edm, net = EDM(), SmoothNet()
    scheduler = EDMEulerScheduler(sigma_data=0.5)
    scheduler.set_timesteps(12)
    start = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = start * scheduler.init_noise_sigma
    for t in scheduler.timesteps:  # diffusers' EDM loop: the network sees c_in x and c_noise (its timesteps)
        output = net(scheduler.scale_model_input(x, t), NOISE_LEVEL_SCALE * t.expand(len(x)))
        x = scheduler.step(output, t, x).prev_sample
    # The same levels (their float32 rounding in diffusers' table; eq. 5 itself is checked above): the same step.
    ours = integrate(lambda x, s: (x - edm.denoise(net, x, torch.full((len(x),), s))) / s,
                     start * scheduler.init_noise_sigma, scheduler.sigmas, heun=False, progress=False)
    assert torch.allclose(ours, x, atol=1e-5)


# -- rectified flow -----------------------------------------------------------------------------------------------------

def test_flow_path_target_and_loss_are_the_papers():
    flow, net = RectifiedFlow(), SmoothNet().double()
    x0, noise = torch.rand(5, 1, 4, 4, dtype=torch.float64), torch.randn(5, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    x_t = flow.interpolate(x0, noise, t)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[-1], noise[-1])
    # v = dx_t/dt by finite differences of the path
    h = 1e-6
    numeric = (flow.interpolate(x0, noise, t + h) - flow.interpolate(x0, noise, t - h)) / (2 * h)
    assert torch.allclose(numeric, flow.velocity_target(x0, noise), atol=1e-8)
    expected = (net(x_t, TIME_SCALE * t) - (noise - x0)).square().mean()
    assert torch.allclose(flow.loss(net, x0, t, noise), expected, rtol=1e-10)


def test_flow_training_times_are_logit_normal():
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    t = RectifiedFlow(logit_mean=0.5, logit_std=0.8).training_times(u)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=1e-6) and logit.std().item() == pytest.approx(0.8, rel=1e-3)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_diffusers_flow_match_euler_scheduler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    flow, net = RectifiedFlow(shift=shift), SmoothNet()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(10)
    start = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = start.clone()
    for t in scheduler.timesteps:  # diffusers passes 1000 sigma to the network as its timestep
        x = scheduler.step(net(x, t.expand(len(x))), t, x).prev_sample
    ours = integrate(lambda x, t: flow.velocity(net, x, torch.full((len(x),), t)), start, scheduler.sigmas,
                     heun=False, progress=False)
    assert torch.allclose(ours, x, atol=1e-5)
    # and our own times carry the same shift (SD3 eq. 23) as diffusers' on the same unshifted grid
    base = torch.linspace(1, 0, 11, dtype=torch.float64)
    assert torch.allclose(flow.sampling_times(10), shift * base / (1 + (shift - 1) * base))


# -- convergence on the exact denoiser of Gaussian data -------------------------------------------------------------

MEAN, STD = 0.3, 0.6  # data ~ N(MEAN, STD^2) in every pixel


def _edm_exact(x, level):
    """F such that D(x; sigma) is E[y | y + sigma n] for Gaussian data: mean + s^2 / (s^2 + sigma^2) (x - mean)."""
    edm = EDM()
    sigma = (level / NOISE_LEVEL_SCALE * 4).exp().double().reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
    x_full = x / c_in
    denoised = MEAN + STD**2 / (STD**2 + sigma**2) * (x_full - MEAN)
    return (denoised - c_skip * x_full) / c_out


def _flow_exact(x, level):
    """The velocity E[eps - x_0 | x_t] for Gaussian data: d/dt of the mean plus the std's rate times the z-score."""
    t = (level / TIME_SCALE).double().reshape(-1, 1, 1, 1)
    std = torch.sqrt((1 - t) ** 2 * STD**2 + t**2)
    return -MEAN + (t - (1 - t) * STD**2) / std * (x - (1 - t) * MEAN) / std


def _orders(sample, exact_end, steps=(8, 16, 32)) -> list[float]:
    errors = [(sample(s) - exact_end).abs().max().item() for s in steps]
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("heun, order", [(False, 1), (True, 2)])
def test_edm_sampler_converges_at_its_order(heun, order):
    edm = EDM(sigma_max=20.0)
    start = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # The exact ODE keeps (x - mean) / sqrt(s^2 + sigma^2): from sigma_max to 0 it scales by s / sqrt(s^2 + max^2).
    x_max = start * edm.sigma_max
    exact = MEAN + (x_max - MEAN) * STD / math.sqrt(STD**2 + edm.sigma_max**2)
    found = _orders(lambda s: sample_edm(edm, _edm_exact, start, steps=s, heun=heun, progress=False), exact)
    assert all(order - 0.3 < o < order + 0.6 for o in found), found


@pytest.mark.parametrize("heun, order", [(False, 1), (True, 2)])
def test_flow_sampler_converges_at_its_order(heun, order):
    start = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = MEAN + STD * start  # x_1 = eps is the z-score, kept along the exact ODE
    found = _orders(lambda s: sample_flow(RectifiedFlow(), _flow_exact, start, steps=s, heun=heun, progress=False),
                    exact)
    assert all(order - 0.3 < o < order + 0.6 for o in found), found


def test_edm_churn_adds_noise_only_where_asked():
    edm, net = EDM(), SmoothNet()
    start = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    plain = sample_edm(edm, net, start, steps=6, progress=False)
    from ddpmkit.samplers import ImageNoise
    outside = sample_edm(edm, net, start, steps=6, churn=40, churn_range=(100.0, 200.0),
                         noise=ImageNoise.from_seeds([0, 1]), progress=False)
    assert torch.equal(plain, outside)  # no level inside S_tmin..S_tmax: Algorithm 1 exactly
    churned = sample_edm(edm, net, start, steps=6, churn=40, noise=ImageNoise.from_seeds([0, 1]), progress=False)
    assert not torch.allclose(plain, churned)
