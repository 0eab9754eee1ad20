"""DPM-Solver++, UniPC and Heun against diffusers' implementations of the same algorithms, dynamic thresholding and
guidance rescale against diffusers' functions, and every solver's order of accuracy on the exact denoiser of
Gaussian data."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import gaussian_posterior_mean, oracle_denoiser
from ddpmkit.guidance import guided_denoiser
from ddpmkit.samplers import (SAMPLERS, dynamic_threshold, sample_ddim, sample_dpm_solver, sample_heun,
                              sample_sde_dpm_solver, sample_unipc, spaced_timesteps)
from ddpmkit.samplers.dpm_solver import first_order_step
from ddpmkit.schedule import NoiseSchedule, linear_beta_schedule
from test_samplers import DIFFUSERS_PREDICTION, ToyDenoiser, _setup, assert_same_samples


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is the optional reference implementation")


@torch.no_grad()
def _run(scheduler, model, x):
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model(x_in, torch.full((len(x),), int(t)))
        x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps,spacing", [(5, "trailing"), (10, "leading"), (20, "karras"), (16, "logsnr")])
@pytest.mark.parametrize("threshold", [None, 0.9])
def test_dpm_solver_matches_diffusers(diffusers, order, prediction, steps, spacing, threshold):
    sched, betas, _, _, x_T = _setup(T=100)
    model = ToyDenoiser()
    ours = sample_dpm_solver(model, sched, x_T.clone(), steps=steps, order=order, prediction=prediction,
                             clip_range=(-1, 1) if threshold else None, threshold=threshold, spacing=spacing,
                             progress=False)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=len(betas), trained_betas=betas.float().numpy(), solver_order=order,
        prediction_type=DIFFUSERS_PREDICTION[prediction], algorithm_type="dpmsolver++", solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero", thresholding=threshold is not None,
        dynamic_thresholding_ratio=threshold or 0.995, sample_max_value=1e9)
    ref.set_timesteps(timesteps=spaced_timesteps(len(betas), steps, spacing, sched.alphas_cumprod_float64))
    assert_same_samples(ours, _run(ref, model, x_T.clone()))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps,spacing", [(5, "trailing"), (12, "logsnr")])
def test_sde_dpm_solver_matches_diffusers(diffusers, prediction, steps, spacing):
    sched, betas, seeds, noise, x_T = _setup(T=100)
    model = ToyDenoiser()
    ours = sample_sde_dpm_solver(model, sched, x_T.clone(), steps=steps, prediction=prediction, clip_range=None,
                                 spacing=spacing, noise=noise, progress=False)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=len(betas), trained_betas=betas.float().numpy(), solver_order=2,
        prediction_type=DIFFUSERS_PREDICTION[prediction], algorithm_type="sde-dpmsolver++", solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero")
    ref.set_timesteps(timesteps=spaced_timesteps(len(betas), steps, spacing, sched.alphas_cumprod_float64))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.cat([torch.randn((1, *x_T.shape[1:]), generator=g) for g in gens])  # x_T, from the same generators
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(model(x, torch.full((len(x),), int(t))), t, x, generator=gens).prev_sample
    assert_same_samples(ours, x)


def test_first_order_dpm_solver_step_is_ddim():
    # DPM-Solver++(1) is DDIM with eta = 0 in log-SNR variables (Lu et al. 2022, §4): from s to t,
    # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_s with eps_s = (x_s - sqrt(abar_s) x_0) / sqrt(1 - abar_s).
    x_s, x0 = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (alpha_s, sigma_s), (alpha_t, sigma_t) = [(math.sqrt(a), math.sqrt(1 - a)) for a in (0.2, 0.9)]
    h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)
    ddim = alpha_t * x0 + sigma_t * (x_s - alpha_s * x0) / sigma_s
    torch.testing.assert_close(first_order_step(x_s, x0, sigma_s, sigma_t, alpha_t, h), ddim, rtol=1e-12, atol=1e-12)
    sched, _, _, _, x_T = _setup()
    torch.testing.assert_close(sample_dpm_solver(ToyDenoiser(), sched, x_T, steps=8, order=1, progress=False),
                               sample_ddim(ToyDenoiser(), sched, x_T, steps=8, progress=False))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps,spacing", [(2, "trailing"), (3, "logsnr"), (5, "trailing"), (10, "leading"),
                                          (16, "logsnr")])
@pytest.mark.parametrize("threshold", [None, 0.9])
def test_unipc_matches_diffusers(diffusers, order, variant, prediction, steps, spacing, threshold):
    sched, betas, _, _, x_T = _setup(T=100)
    model = ToyDenoiser()
    ours = sample_unipc(model, sched, x_T.clone(), steps=steps, order=order, variant=variant, prediction=prediction,
                        clip_range=(-1, 1) if threshold else None, threshold=threshold, spacing=spacing,
                        progress=False)
    ref = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=len(betas), trained_betas=betas.float().numpy(), solver_order=order,
        prediction_type=DIFFUSERS_PREDICTION[prediction], solver_type=variant, predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero", thresholding=threshold is not None,
        dynamic_thresholding_ratio=threshold or 0.995, sample_max_value=1e9)
    # diffusers' UniPC takes no list of timesteps: set its steps and their sigmas as its set_timesteps would.
    ref.set_timesteps(steps)
    timesteps = spaced_timesteps(len(betas), steps, spacing, sched.alphas_cumprod_float64)
    abar = sched.alphas_cumprod_float64[timesteps]
    ref.timesteps = torch.tensor(timesteps)
    ref.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=abar.dtype)]).float()
    x = x_T.clone()
    with torch.no_grad():
        for k, t in enumerate(ref.timesteps):
            out = model(x, torch.full((len(x),), int(t)))
            if k == steps - 1 and variant == "bh1":
                # The last step, to sigma = 0, lands on the predicted x_0; diffusers' bh1 step computes it as
                # B(h) * 0 with B(h) = h = -inf, which is NaN, so its x_0 is taken directly.
                x = ref.convert_model_output(out, sample=x)
            else:
                x = ref.step(out, t, x).prev_sample
    assert_same_samples(ours, x)


def test_unipc_refuses_unknown_orders_and_variants():
    sched, _, _, _, x_T = _setup(T=100)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample_unipc(ToyDenoiser(), sched, x_T, order=4, progress=False)
    with pytest.raises(ValueError, match="variant must be one of bh1, bh2"):
        sample_unipc(ToyDenoiser(), sched, x_T, variant="bh3", progress=False)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps,spacing", [(5, "trailing"), (10, "leading"), (8, "karras")])
@pytest.mark.parametrize("clip", [True, False])
def test_heun_matches_diffusers(diffusers, prediction, steps, spacing, clip):
    sched, betas, _, _, x_T = _setup(T=100)
    model = ToyDenoiser()
    ours = sample_heun(model, sched, x_T.clone(), steps=steps, prediction=prediction,
                       clip_range=(-1, 1) if clip else None, spacing=spacing, progress=False)
    ref = diffusers.HeunDiscreteScheduler(num_train_timesteps=len(betas), trained_betas=betas.float().numpy(),
                                          prediction_type=DIFFUSERS_PREDICTION[prediction], clip_sample=clip)
    timesteps = spaced_timesteps(len(betas), steps, spacing, sched.alphas_cumprod_float64)
    ref.set_timesteps(timesteps=timesteps)
    # x^ = x_T / sqrt(abar) at the first timestep (diffusers' init_noise_sigma is sigma_max with its default
    # linspace spacing, the k-diffusion convention; the VP model's own x^ is what ddpmkit starts from).
    x_hat = x_T / sched.alphas_cumprod_float64[timesteps[0]].sqrt().float()
    assert len(ref.timesteps) == 2 * steps - 1  # network evaluations
    assert_same_samples(ours, _run(ref, model, x_hat))


def test_dynamic_thresholding_is_diffusers_threshold_sample(diffusers):
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 1, 2, 4])[:, None,
                                                                                               None, None]
    ref = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e9)
    expected = ref._threshold_sample(x0.clone())
    torch.testing.assert_close(dynamic_threshold(x0, (-1, 1), 0.995), expected)
    quiet = x0[:1] * 0.3  # its 99.5% quantile of |x| is below 1, so s = 1: plain clipping
    assert torch.equal(dynamic_threshold(quiet, (-1, 1), 0.995), quiet.clamp(-1, 1))
    # On [0, 1] data it thresholds around 0.5, the middle of the range.
    torch.testing.assert_close(dynamic_threshold(x0 / 2 + 0.5, (0, 1), 0.995), expected / 2 + 0.5)


def test_guidance_rescale_is_diffusers_rescale_noise_cfg(diffusers):
    rescale_noise_cfg = pytest.importorskip("diffusers.guiders.guider_utils").rescale_noise_cfg

    g = torch.Generator().manual_seed(1)
    cond_net, uncond = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)

    def net(x, t, y):  # the null label (2) gets the unconditional output
        return torch.where((y == 2)[:, None, None, None], uncond.repeat(2, 1, 1, 1)[: len(y)],
                           cond_net.repeat(2, 1, 1, 1)[: len(y)])

    labels, w, phi = torch.tensor([0, 1, 0]), 3.0, 0.7
    ours = guided_denoiser(net, labels, w, null_label=2, rescale=phi)(torch.zeros(3, 2, 4, 4), torch.zeros(3))
    cfg = uncond + (1 + w) * (cond_net - uncond)  # diffusers' guidance_scale = 1 + w
    torch.testing.assert_close(ours, rescale_noise_cfg(cfg, cond_net, guidance_rescale=phi))


# -- order of accuracy on the exact denoiser of Gaussian data ---------------------------------------------------

def _ode_error(sampler: str, steps: int, spacing: str = "logsnr", **options) -> float:
    """Max error against the exact probability-flow ODE solution for data ~ N(m, s^2): in x^ = x_t / sqrt(abar),
    sigma = sqrt((1 - abar) / abar), x^ - m grows as sqrt(s^2 + sigma^2), so x_0 = m + (x^_start - m) s /
    sqrt(s^2 + sigma_start^2)."""
    m, s = 0.3, 0.5
    sched = NoiseSchedule(linear_beta_schedule(1000))
    model = oracle_denoiser(sched, "eps", gaussian_posterior_mean(sched, m, s))
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = spaced_timesteps(1000, steps, spacing, sched.alphas_cumprod_float64)[0]
    abar = float(sched.alphas_cumprod_float64[start])
    exact = m + (x_T / math.sqrt(abar) - m) * s / math.sqrt(s**2 + (1 - abar) / abar)
    out = SAMPLERS[sampler](lambda x, t: model(x.float(), t).double(), sched, x_T, steps=steps, clip_range=None,
                            spacing=spacing, progress=False, **options)
    return (out - exact).abs().max().item()


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("dpm++2m", 2), ("dpm++3m", 3), ("heun", 2), ("unipc", 3)])
def test_each_solver_converges_at_its_order(sampler, order):
    # UniPC's corrector raises its predictor's order by one: UniPC-2 is a third-order method (Zhao et al. 2023, §3).
    # log-SNR steps: DPM-Solver's own choice; uniform-in-t steps make multistep extrapolation unstable at the
    # clean end (huge last steps in lambda), in diffusers' implementation as in this one.
    errors = [_ode_error(sampler, steps) for steps in (20, 40, 80)]
    measured = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert errors == sorted(errors, reverse=True) and measured[-1] > order - 0.35, (errors, measured)


# -- through DiffusionSampler and the command line ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["dpm++2m", "dpm++3m", "sde-dpm++2m", "heun", "unipc"])
def test_new_samplers_with_guidance_thresholding_and_rescale_do_not_depend_on_the_batch(tiny_conditional_checkpoint,
                                                                                         name):
    from ddpmkit.sampling import DiffusionSampler

    model = DiffusionSampler(tiny_conditional_checkpoint)
    options = {"sampler": name, "steps": 4, "labels": [0, 1, 1], "guidance": 3.0, "threshold": 0.995,
               "guidance_rescale": 0.7, "spacing": "logsnr", "progress": False}
    whole = model.sample(3, batch_size=3, **options)
    assert whole.shape == (3, 1, 8, 8) and whole.min() >= 0 and whole.max() <= 1
    torch.testing.assert_close(model.sample(3, batch_size=1, **options), whole, atol=1e-5, rtol=0)


def test_heun_churn_draws_its_noise_from_each_images_seed(tiny_conditional_checkpoint):
    from ddpmkit.sampling import DiffusionSampler

    model = DiffusionSampler(tiny_conditional_checkpoint)
    plain = model.sample_heun(2, steps=5, progress=False)
    churned = model.sample_heun(2, steps=5, churn=5.0, progress=False)
    assert not torch.allclose(plain, churned)
    torch.testing.assert_close(model.sample_heun(2, steps=5, churn=5.0, seed=1, progress=False)[0],
                               churned[1], atol=1e-5, rtol=0)


def test_sampler_options_from_the_command_line(tiny_conditional_checkpoint, tmp_path, capsys):
    from ddpmkit.cli import main

    common = ["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--num-samples", "2", "--no-progress",
              "--output-dir", str(tmp_path)]
    assert main([*common, "--sampler", "dpm++2m", "--spacing", "karras", "--class", "1", "--guidance", "2",
                 "--threshold", "0.99", "--guidance-rescale", "0.5"]) == 0
    assert len(list((tmp_path / "images").glob("class_1_seed_*.png"))) == 2
    capsys.readouterr()
    assert main([*common, "--sampler", "heun", "--threshold", "1.5"]) == 2
    assert "threshold is the quantile of |x_0|" in capsys.readouterr().err
    assert main([*common, "--threshold", "0.99", "--no-clip"]) == 2
    assert "cannot be combined with --no-clip" in capsys.readouterr().err
    assert main([*common, "--guidance-rescale", "2"]) == 2
    assert "guidance_rescale must be between 0 and 1" in capsys.readouterr().err


def test_without_a_sampler_named_python_and_the_command_line_use_the_default(tiny_conditional_checkpoint, tmp_path,
                                                                             capsys):
    from ddpmkit.build import DEFAULT_STEPS, sampler_options, steps_taken
    from ddpmkit.cli import main
    from ddpmkit.config import DEFAULT_SAMPLER, resolve_config
    from ddpmkit.sampling import DiffusionSampler

    cfg = resolve_config("quick_ddpm")  # T = 1000: the default's 20 steps, not all T
    assert sampler_options(cfg, DEFAULT_SAMPLER, None)["steps"] == steps_taken(cfg, DEFAULT_SAMPLER, None) == 20
    assert steps_taken(cfg, "ddpm", None) == 1000 and steps_taken(cfg, "ddim", 7) == 7
    model = DiffusionSampler(tiny_conditional_checkpoint)
    steps = min(DEFAULT_STEPS[DEFAULT_SAMPLER], model.schedule.num_timesteps)
    named = model.sample(2, sampler=DEFAULT_SAMPLER, steps=steps, progress=False)
    torch.testing.assert_close(model.sample(2, progress=False), named, atol=0, rtol=0)
    assert not torch.allclose(model.sample(2, sampler="ddpm", progress=False), named)
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--num-samples", "2", "--no-progress",
                 "--output-dir", str(tmp_path)]) == 0
    assert f"2 samples ({DEFAULT_SAMPLER})" in capsys.readouterr().out
