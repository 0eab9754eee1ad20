"""LPIPS (Zhang et al. 2018) through torchmetrics, and the diversity of samples measured with it.

LPIPS compares ImageNet-network features; its linear heads ship with torchmetrics, but the backbone (AlexNet, VGG16
or SqueezeNet from torchvision) must be in torch hub's cache or at a path the user gives. When it is missing, LPIPS
is skipped with a note that says which file to put where; it never runs on random weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import LOCAL
from .hub import find_weights, serving

# LPIPS network name -> torchvision's weights enum for its backbone.
LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
# Images are upsampled to at least this size, so that every AlexNet layer LPIPS reads still has a 3 x 3 map
# (at 32 px its last three layers see a single pixel).
LPIPS_MIN_SIZE = 64


def lpips_backbone(net: str = "alex", path: str | Path | None = None) -> tuple[Path, str]:
    """(weights file, the file name torchvision expects) of the LPIPS backbone; FileNotFoundError with the
    instructions when it is absent."""
    import torchvision

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS network must be one of {', '.join(LPIPS_BACKBONES)}, got {net!r}")
    url = getattr(torchvision.models, LPIPS_BACKBONES[net]).DEFAULT.url
    filename = url.rsplit("/", 1)[-1]
    return find_weights(filename, path, f"LPIPS ({net}) needs torchvision's ImageNet backbone weights", url,
                        "pass --lpips-weights PATH"), filename


def lpips_metric(net: str = "alex", path: str | Path | None = None):
    """A torchmetrics LPIPS object (mean over pairs) on the backbone found by ``lpips_backbone``; it takes float
    images in [0, 1] prepared by ``to_lpips_input``."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    weights, filename = lpips_backbone(net, path)
    with serving(weights, filename):
        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True, **LOCAL)
    return metric.eval()


def to_lpips_input(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (N, 1 or 3, H, W) -> 3 channels, at least LPIPS_MIN_SIZE pixels on a side."""
    images = images.float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if min(images.shape[-2:]) < LPIPS_MIN_SIZE:
        scale = LPIPS_MIN_SIZE / min(images.shape[-2:])
        images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    return images.contiguous()


def paired_lpips(metric, first: torch.Tensor, second: torch.Tensor, batch_size: int = 256) -> float:
    """Mean LPIPS between first[i] and second[i]."""
    metric.reset()
    with torch.inference_mode():
        for start in range(0, len(first), batch_size):
            metric.update(to_lpips_input(first[start: start + batch_size]),
                          to_lpips_input(second[start: start + batch_size]))
        return float(metric.compute())


def diversity_pairs(labels: torch.Tensor | None, count: int, max_pairs: int, seed: int = 0) -> torch.Tensor:
    """(P, 2) index pairs i < j of images with the same label (all images if ``labels`` is None): every pair when a
    group has at most ``max_pairs`` of them, else ``max_pairs`` drawn uniformly without replacement (seeded)."""
    groups = [torch.arange(count)] if labels is None else [torch.nonzero(labels == c).flatten()
                                                          for c in labels.unique()]
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for members in groups:
        if len(members) < 2:
            continue
        pairs = torch.combinations(members, 2)
        if len(pairs) > max_pairs:
            pairs = pairs[torch.randperm(len(pairs), generator=generator)[:max_pairs]]
        chosen.append(pairs)
    if not chosen:
        raise ValueError("diversity needs at least two images of one class")
    return torch.cat(chosen)


def lpips_diversity(metric, images: torch.Tensor, labels: torch.Tensor | None, max_pairs: int = 1000,
                    seed: int = 0, batch_size: int = 256) -> tuple[float, int]:
    """Mean pairwise LPIPS among images of the same class (of all images when unlabelled): higher is more diverse.
    Returns (mean, number of pairs)."""
    pairs = diversity_pairs(labels, len(images), max_pairs, seed)
    return paired_lpips(metric, images[pairs[:, 0]], images[pairs[:, 1]], batch_size), len(pairs)
