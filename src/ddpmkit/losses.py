"""The training objective: one function (DDPM Algorithm 1, with the prediction target, the distance and a weighting
over noise levels configurable)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .objectives import objective_of
from .schedule import NoiseSchedule

LOSS_WEIGHTINGS = ("none", "min_snr")


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al. 2023, §3.4): weight each image's loss so that, whatever the network
    predicts, the objective is min(SNR_t, gamma) ||x_0 - x_0_hat||^2. An eps error is sqrt(SNR_t) times the x_0
    error and a v error sqrt(SNR_t + 1) times, hence the divisions. Easy low-noise timesteps (large SNR) no longer
    dominate."""
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1)
    raise ValueError(f"unknown prediction {prediction!r}; choose eps, x0 or v")


def training_loss(d):
    """The loss a ``DiffusionConfig``'s objective trains with, as one callable
    ``(network, schedule, x0, t, u, noise, y) -> loss``: DDPM's ``diffusion_loss`` at the timesteps ``t`` with the
    config's prediction, distance and weighting, or EDM's / rectified flow's at the levels their distributions give
    the uniform numbers ``u`` (``objectives``)."""
    objective = objective_of(d)
    if objective is None:
        options = loss_options(d)
        return lambda network, schedule, x0, t, u, noise, y=None: diffusion_loss(network, schedule, x0, t, noise, y,
                                                                                 **options)
    levels = objective.training_sigmas if d.objective == "edm" else objective.training_times
    return lambda network, schedule, x0, t, u, noise, y=None: objective.loss(network, x0, levels(u), noise, y)


def loss_options(d) -> dict:
    """The keyword arguments of ``diffusion_loss`` that a ``DiffusionConfig`` fixes: trained and held-out losses."""
    return {"prediction": d.prediction, "loss": d.loss, "weighting": d.loss_weighting,
            "min_snr_gamma": d.min_snr_gamma}


def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   y: torch.Tensor | None = None, *, prediction: str = "eps", loss: str = "mse",
                   weighting: str = "none", min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Mean loss between the network's output at x_t = q_sample(x0, t, noise) and its target.

    With prediction="eps", loss="mse" and weighting="none" this is DDPM's L_simple (eq. 14); weighting="min_snr"
    scales each image's loss by ``min_snr_weight`` (with mse only: its factors convert squared errors, so they mean
    nothing for l1 or bce). "bce" treats the output as the probability of each pixel of x_0
    in [0, 1] (the network ends in a sigmoid) and is computed in float32, unweighted.
    """
    if weighting == "min_snr" and loss != "mse":
        raise ValueError(f"weighting='min_snr' needs loss='mse' (its SNR factors convert squared errors), got "
                         f"loss={loss!r}")
    xt = schedule.q_sample(x0, t, noise)
    output = model(xt, t, y) if y is not None else model(xt, t)
    target = schedule.training_target(prediction, x0, t, noise)
    if loss == "bce":
        with torch.autocast(device_type=output.device.type, enabled=False):
            return F.binary_cross_entropy(output.float().clamp(1e-6, 1 - 1e-6), target)
    if loss == "mse":
        per_pixel = F.mse_loss(output.float(), target, reduction="none")
    elif loss == "l1":
        per_pixel = F.l1_loss(output.float(), target, reduction="none")
    else:
        raise ValueError(f"unknown loss {loss!r}; choose mse, l1 or bce")
    if weighting == "none":
        return per_pixel.mean()
    if weighting == "min_snr":
        weight = min_snr_weight(schedule.snr(t).float(), prediction, min_snr_gamma)
        return (per_pixel.flatten(1).mean(1) * weight).mean()
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}")
