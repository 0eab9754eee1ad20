"""Pictures a person looks at: sample grids, individual PNGs plus an .npz, and the training loss curve."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image


def grid_rows(n: int) -> int:
    """Images per row for a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save float images in [0, 1], (N, C, H, W), as one grid PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=nrow or grid_rows(len(images)), padding=2, pad_value=1.0)
    return path


def write_samples(images: torch.Tensor, output_dir: str | Path, seeds: list[int] | None = None) -> dict[str, Path]:
    """Write ``grid.png``, ``images/seed_XXXXX.png`` per image and ``samples.npz`` (uint8, N x H x W x C, key
    ``arr_0`` as in the guided-diffusion / TTUR evaluation tools) for float images in [0, 1]."""
    out = Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    seeds = seeds if seeds is not None else list(range(len(images)))
    for image, seed in zip(images, seeds):
        save_image(image, out / "images" / f"seed_{seed:05d}.png")
    uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    np.savez_compressed(out / "samples.npz", arr_0=uint8, seeds=np.asarray(seeds))
    return {"grid": save_grid(images, out / "grid.png"), "npz": out / "samples.npz", "images": out / "images"}


def plot_loss_curve(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot training loss (and held-out EMA loss when logged) against step from a run's ``log.jsonl``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    heldout = [(r["step"], r["heldout_loss"]) for r in records if "heldout_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(*zip(*train), label="training loss (mean over the log interval)")
    if heldout:
        ax.plot(*zip(*heldout), "o-", label="held-out loss, EMA weights")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return Path(out_path)
