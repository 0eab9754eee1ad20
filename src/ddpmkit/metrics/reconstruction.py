"""How well DDIM inversion and deterministic decoding reconstruct real images (DDIM paper §5.4, Table 2): invert
real test images to x_T, decode them back with the same number of steps, and compare with the originals by PSNR and
SSIM (torchmetrics) and, when its backbone weights are present, LPIPS."""
from __future__ import annotations

import time

import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from tqdm.auto import tqdm

from . import LOCAL
from .perceptual import paired_lpips


def reconstruction_metrics(sampler, images: torch.Tensor, labels: torch.Tensor | None, steps: int, *,
                           refine: int = 0,        # fixed-point iterations per inversion step (see invert_ddim)
                           batch_size: int = 500,  # images per forward pass; results don't depend on it
                           lpips=None,             # a torchmetrics LPIPS object, or None to leave LPIPS out
                           progress: bool = True) -> dict:
    """PSNR (dB, mean over images), SSIM and LPIPS of decode(invert(images)) against ``images`` (float [0, 1]).

    Also reports the root mean square of the inverted latents: about 1 for an inversion that reaches the N(0, I) prior.
    """
    started = time.perf_counter()
    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3), **LOCAL)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, **LOCAL)
    rebuilt, latent_sq, latent_count = [], 0.0, 0
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc=f"inversion, {steps} steps", disable=not progress or len(batches) < 2):
        original = images[start: start + batch_size]
        y = labels[start: start + batch_size] if labels is not None else None
        latents = sampler.invert(original, y, steps=steps, refine=refine, progress=progress)
        latent_sq += float(latents.double().pow(2).sum())
        latent_count += latents.numel()
        decoded = sampler.decode(latents, y, steps=steps, progress=progress)
        psnr.update(decoded, original)
        ssim.update(decoded, original)
        if lpips is not None:
            rebuilt.append(decoded)
    result = {"psnr": float(psnr.compute()), "ssim": float(ssim.compute())}
    if lpips is not None:
        result["lpips"] = paired_lpips(lpips, torch.cat(rebuilt), images, batch_size)
    result["latent_rms"] = (latent_sq / latent_count) ** 0.5
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
