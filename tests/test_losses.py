"""The training objective's weighting over noise levels, against the paper's definition and diffusers' code."""
import pytest
import torch
import torch.nn.functional as F

from ddpmkit.losses import diffusion_loss, min_snr_weight
from ddpmkit.schedule import NoiseSchedule, linear_beta_schedule


class FixedGuess(torch.nn.Module):
    """A 'network' whose output is a fixed function of its input, so that every prediction has some error."""

    def forward(self, x, t):
        return 0.5 * torch.tanh(x) + 0.01 * t.float()[:, None, None, None]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_is_the_clipped_snr_times_the_x0_error(prediction):
    # Hang et al. 2023: whatever the network predicts, the Min-SNR-gamma objective is
    # min(SNR_t, gamma) * ||x_0 - x_0_hat||^2, with x_0_hat the x_0 its output implies.
    schedule = NoiseSchedule(linear_beta_schedule(1000)).double()
    x0, noise = torch.rand(64, 1, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(64, 1, 4, 4, dtype=torch.float64)
    t = torch.linspace(0, 999, 64).long()  # SNR from ~1e4 down to ~4e-5: both sides of gamma
    net = FixedGuess().double()
    loss = diffusion_loss(net, schedule, x0, t, noise, prediction=prediction, weighting="min_snr", min_snr_gamma=5.0)
    xt = schedule.q_sample(x0, t, noise)
    x0_hat, _ = schedule.x0_and_eps(prediction, net(xt, t), xt, t)
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    expected = (snr.clamp(max=5.0) * (x0_hat - x0).square().flatten(1).mean(1)).mean()
    assert torch.allclose(loss.double(), expected, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_match_diffusers(prediction):
    # diffusers' train_text_to_image.py: weights = min(snr, gamma) / snr (epsilon) or / (snr + 1) (v_prediction).
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    t = torch.arange(0, 1000, 7)
    snr = compute_snr(scheduler, t)
    reference = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    reference = reference / snr if prediction == "eps" else reference / (snr + 1)
    ours = min_snr_weight(NoiseSchedule(scheduler.betas.double()).snr(t).float(), prediction, 5.0)
    assert torch.allclose(ours, reference, rtol=1e-4)


def test_no_weighting_is_ddpm_l_simple():
    schedule = NoiseSchedule(linear_beta_schedule(100))
    x0, noise, t = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4), torch.randint(0, 100, (8,))
    net = FixedGuess()
    expected = F.mse_loss(net(schedule.q_sample(x0, t, noise), t), noise)  # DDPM eq. 14
    assert torch.allclose(diffusion_loss(net, schedule, x0, t, noise), expected)


def test_unknown_weighting_is_refused():
    schedule = NoiseSchedule(linear_beta_schedule(10))
    with pytest.raises(ValueError, match="weighting"):
        diffusion_loss(FixedGuess(), schedule, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long),
                       torch.zeros(1, 1, 2, 2), weighting="snr")


def test_min_snr_refuses_an_l1_loss():
    # Its factors turn a squared eps or v error into the squared x_0 error (sqrt(SNR)^2 = SNR); an absolute error
    # scales by sqrt(SNR), so with l1 the weights would not give min(SNR, gamma) |x_0 error| as documented.
    schedule = NoiseSchedule(linear_beta_schedule(100))
    x0, noise, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([3, 50])
    with pytest.raises(ValueError, match="needs loss='mse'"):
        diffusion_loss(FixedGuess(), schedule, x0, t, noise, loss="l1", weighting="min_snr")
