"""Why deterministic samplers stall on a briefly trained model: its noise prediction ignores the norm of x_T.

Run by hand (not a test), e.g.:

    python benchmarks/noise_norm.py --checkpoint runs/quick --json docs/noise_norm_quick_cpu.json

Two measurements on one checkpoint:

1. At the first timestep t = T - 1, where x_t is almost all noise (sqrt(abar) ~ 0.006 on a linear schedule), the
   exact noise prediction is about x_T itself, so ||eps_hat|| / ||x_T|| should be ~1 for every x_T. The script
   prints that ratio against the per-image std of x_T for ``--probe`` seeds, and the correlation of the two.
   A network whose ratio is ~1 / std(x_T) predicts noise of one fixed norm, whatever the input's: the part of
   x_T beyond that norm is never removed by a deterministic sampler, and ends up in x_0 as speckle.
2. The domain FD (and accuracy) of deterministic samplers from x_T as drawn, against the same x_T rescaled to unit
   std per image (same direction, so the same image otherwise). If the stall is this blind spot, the rescaled
   starts close much of the gap to the stochastic samplers, whose fresh noise at every step has the expected norm.

Images i use seed i (class after class for conditional models, as ``ddpmkit evaluate`` draws them).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ddpmkit.evaluate import draw_for_metrics, evaluate
from ddpmkit.files import write_json
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.viz import write_npz


class UnitStdNoise(DiffusionSampler):
    """A DiffusionSampler whose x_T is each seed's usual noise rescaled to standard deviation 1."""

    def noise(self, seeds):
        x_T, noise = super().noise(seeds)
        return x_T / x_T.flatten(1).std(dim=1).view(-1, *[1] * (x_T.ndim - 1)), noise


@torch.no_grad()
def norm_probe(model: DiffusionSampler, seeds: list[int]) -> dict:
    """||eps_hat|| / ||x_T|| at t = T - 1 against std(x_T), per image (eps-prediction models)."""
    x_T, _ = model.noise(seeds)
    labels = torch.zeros(len(seeds), dtype=torch.long) if model.is_conditional else None
    t = torch.full((len(seeds),), model.schedule.num_timesteps - 1)
    output = model.denoiser(labels)(x_T.to(model.device), t.to(model.device)).float().cpu()
    _, eps = model.schedule.x0_and_eps(model.config.diffusion.prediction, output, x_T, t)
    std = x_T.flatten(1).std(dim=1)
    ratio = eps.flatten(1).norm(dim=1) / x_T.flatten(1).norm(dim=1)
    return {"seeds": len(seeds), "std_x_T": [min(std).item(), max(std).item()],
            "ratio": [min(ratio).item(), max(ratio).item()],
            "ratio_times_std": [min(ratio * std).item(), max(ratio * std).item()],
            "correlation_ratio_std": torch.corrcoef(torch.stack([ratio, std]))[0, 1].item()}


def quality(model: DiffusionSampler, sampler: str, steps: int, samples: int, data_root: str, split: str) -> dict:
    start = time.perf_counter()
    images, labels, seeds = draw_for_metrics(model, samples, 0, 0.0, sampler=sampler, steps=steps, batch_size=500,
                                             progress=False)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = write_npz(images, Path(tmp) / "samples.npz", seeds, None if labels is None else labels.tolist())
        report = evaluate(samples=path, dataset=model.config.data.dataset, data_root=data_root, split=split,
                          metrics=("fd", "accuracy"), progress=False)
    return {**report["metrics"], "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pt file or a run directory")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--probe", type=int, default=1000, help="seeds for the norm probe (default 1000)")
    p.add_argument("--samplers", default="ddim:20,dpm++2m:20", help="deterministic SAMPLER:STEPS pairs")
    p.add_argument("--data-root", default="", help="the real data (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--json", required=True)
    a = p.parse_args()

    drawn, rescaled = DiffusionSampler(a.checkpoint), UnitStdNoise(a.checkpoint)
    data_root = a.data_root or drawn.config.data.root
    result = {"checkpoint": a.checkpoint, "step": drawn.step, "date": datetime.date.today().isoformat(),
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "probe": norm_probe(drawn, list(range(a.probe))), "rows": []}
    print(json.dumps(result["probe"]))
    for pair in a.samplers.split(","):
        sampler, steps = pair.split(":")
        for name, model in (("as drawn", drawn), ("unit std", rescaled)):
            row = {"sampler": sampler, "steps": int(steps), "x_T": name,
                   **quality(model, sampler, int(steps), a.samples, data_root, a.split)}
            result["rows"].append(row)
            write_json(Path(a.json), result)
            print(json.dumps(row))
    fd = next(k for k in result["rows"][0] if k.startswith("fd_"))
    print("| sampler | steps | x_T | FD | accuracy | seconds |\n|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['sampler']} | {r['steps']} | {r['x_T']} | {r[fd]:.2f} | {r.get('accuracy', float('nan')):.3f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
