"""How well trained models of different objectives denoise, noise level by noise level, in one currency.

DDPM, EDM and rectified flow noise data on different scales (DDPM's alpha-bar_t, EDM's sigma, flow's t), but each
level has a log signal-to-noise ratio lambda = log(alpha^2 / sigma^2) (DDPM: log(abar / (1 - abar)); EDM:
-2 log sigma; flow: 2 log((1 - t) / t)), and each model predicts x_0 there (through its parametrisation: eps or v,
D(x; sigma), x_t - t v). So this script noises the same real test images with the same noise at a grid of lambda,
asks every model for x_0 and prints the mean squared error of that prediction in [-1, 1] pixels: where along the
noise levels one objective's model is better than another's, at the same network and training time. Beside it, the
share of each objective's training draws that falls in each band of lambda (its training distribution, by the
inverse CDF of the config's noise-level distribution on 100,000 evenly spread quantiles).

Run by hand (not a test), e.g. on the race's networks (docs/race.md):

    python benchmarks/denoising_error.py --json docs/race_objectives/denoising_error.json \\
        runs/race_objectives/ddpm_uncond_10min_seed0/latest.pt runs/race_objectives/edm_uncond_10min_seed0/latest.pt \\
        runs/race_objectives/flow_uncond_10min_seed0/latest.pt
"""
from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import torch

from ddpmkit.data import load_images, to_model_range
from ddpmkit.files import write_json
from ddpmkit.objectives import EDM, RectifiedFlow, objective_of
from ddpmkit.samplers.common import predict_x0_eps
from ddpmkit.sampling import DiffusionSampler

LAMBDAS = (-10.0, -7.5, -5.0, -2.5, 0.0, 2.5, 5.0, 7.5, 10.0)  # log-SNR, noisiest first


@torch.no_grad()
def predict_x0(model: DiffusionSampler, x0: torch.Tensor, noise: torch.Tensor, lam: float,
               labels: torch.Tensor | None) -> torch.Tensor:
    """The model's x_0 prediction from x0 noised with ``noise`` at log-SNR ``lam`` (for a DDPM model, at the
    timestep whose log-SNR is nearest)."""
    network = model.denoiser(labels)
    n = len(x0)
    if model.objective == "ddpm":
        abar = model.schedule.alphas_cumprod_float64
        t = int((torch.log(abar / (1 - abar)) - lam).abs().argmin())
        a = float(abar[t])
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        return predict_x0_eps(network, model.schedule, x_t, t, model.config.diffusion.prediction, None)[0]
    objective = objective_of(model.config.diffusion)
    if isinstance(objective, EDM):
        sigma = math.exp(-lam / 2)
        return objective.denoise(network, x0 + sigma * noise, torch.full((n,), sigma))
    t = 1 / (1 + math.exp(lam / 2))
    x_t = (1 - t) * x0 + t * noise
    return x_t - t * objective.velocity(network, x_t, torch.full((n,), t))


def training_lambdas(model: DiffusionSampler, draws: int = 100_000) -> torch.Tensor:
    """The log-SNR of the objective's training noise levels at ``draws`` evenly spread quantiles."""
    u = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    objective = objective_of(model.config.diffusion)
    if objective is None:  # DDPM: t uniform over 0..T-1
        abar = model.schedule.alphas_cumprod_float64
        t = (u * len(abar)).long().clamp(max=len(abar) - 1)
        return torch.log(abar[t] / (1 - abar[t]))
    if isinstance(objective, EDM):
        return -2 * objective.training_sigmas(u).log()
    assert isinstance(objective, RectifiedFlow)
    t = objective.training_times(u)
    return 2 * torch.log((1 - t) / t)


def bands(lams: torch.Tensor) -> list[float]:
    """Shares of ``lams`` in the bands between consecutive LAMBDAS midpoints (the first and last open-ended)."""
    edges = [-math.inf, *[(a + b) / 2 for a, b in zip(LAMBDAS, LAMBDAS[1:])], math.inf]
    return [float(((lams >= lo) & (lams < hi)).double().mean()) for lo, hi in zip(edges, edges[1:])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints (or run folders) to compare")
    p.add_argument("--images", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, the same for every model")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    results = []
    for path in a.checkpoints:
        model = DiffusionSampler(path, device="cpu")
        data = load_images(model.config.data, "test")
        x0 = to_model_range(data.images[: a.images], model.config.data.zero_one)
        labels = data.labels[: a.images] if model.is_conditional and data.labels is not None else None
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(a.seed))
        errors = []
        for lam in LAMBDAS:
            parts = [(predict_x0(model, x0[i:i + 250], noise[i:i + 250], lam,
                                 None if labels is None else labels[i:i + 250]) - x0[i:i + 250]).square().sum()
                     for i in range(0, len(x0), 250)]
            errors.append(float(sum(parts) / x0.numel()))
        results.append({"checkpoint": str(path), "objective": model.objective, "step": model.step,
                        "x0_mse": dict(zip(map(str, LAMBDAS), errors)),
                        "training_share": dict(zip(map(str, LAMBDAS), bands(training_lambdas(model))))})
    header = "| model | objective | " + " | ".join(f"{lam:g}" for lam in LAMBDAS) + " |"
    rule = "|---|---|" + "---:|" * len(LAMBDAS)
    print("x_0 MSE by log-SNR (noisiest left)\n" + header + "\n" + rule)
    for r in results:
        print(f"| {Path(r['checkpoint']).parent.name} | {r['objective']} | "
              + " | ".join(f"{v:.4f}" for v in r["x0_mse"].values()) + " |")
    print("\nshare of training draws per log-SNR band\n" + header + "\n" + rule)
    for r in results:
        print(f"| {Path(r['checkpoint']).parent.name} | {r['objective']} | "
              + " | ".join(f"{v:.3f}" for v in r["training_share"].values()) + " |")
    if a.json:
        write_json(Path(a.json), {"machine": platform.platform(), "images": a.images, "seed": a.seed,
                                  "lambdas": LAMBDAS, "results": results})


if __name__ == "__main__":
    main()
