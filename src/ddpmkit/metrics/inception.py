"""The standard metrics on InceptionV3 pool features (FID, KID, Inception Score), through torchmetrics with the
pytorch-fid / TF-FID compatible network of torch-fidelity.

The weights cannot be downloaded on every machine, so they are only ever read from the standard cache or a path the
user gives; when absent, the metric stops and says which file to put where. It never runs with random weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import to_uint8
from ..errors import DdpmkitError
from . import LOCAL
from .hub import find_weights, serving

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def inception_weights(path: str | Path | None = None) -> Path:
    """The Inception weights file: ``path`` if given, else torch hub's cache (``$TORCH_HOME/hub/checkpoints``)."""
    try:
        return find_weights(INCEPTION_FILE, path, "FID, KID and the Inception Score need the TF-FID InceptionV3 "
                            "weights (91 MB)", INCEPTION_URL, "pass --inception-weights PATH; or use the offline "
                            "metrics (fd, is, accuracy)")
    except FileNotFoundError as missing:
        raise DdpmkitError(str(missing)) from None


def inception_metrics(names: set[str], weights: Path, kid_subset: int):
    """torchmetrics objects for the requested names among fid, kid, inception_is; they take uint8 RGB images."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    made = {}
    with serving(weights, INCEPTION_FILE):
        if "fid" in names:
            made["fid"] = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights),
                                                     **LOCAL)
        if "kid" in names:
            made["kid"] = KernelInceptionDistance(feature=2048, subset_size=kid_subset, **LOCAL)
        if "inception_is" in names:
            made["inception_is"] = InceptionScore(**LOCAL)
    return {name: metric.eval() for name, metric in made.items()}


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (N, 1 or 3, H, W) -> uint8 RGB, as the TF-FID network expects (it resizes to 299)."""
    uint8 = to_uint8(images, zero_one=True)
    return uint8.expand(-1, 3, -1, -1) if uint8.shape[1] == 1 else uint8
