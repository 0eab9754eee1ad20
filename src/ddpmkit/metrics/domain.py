"""Offline metrics for MNIST-like data, on the judge classifier instead of Inception.

"FD-<dataset>-classifier" is the Frechet distance between Gaussians fitted to the classifier's 128-d penultimate
features of real and generated images; the classifier Inception Score is exp(E KL(p(y|x) || p(y))) on its class
probabilities. Both are computed by torchmetrics with the classifier as the feature network, so the formulas are
torchmetrics' own. Real-image statistics are computed once per set of real images and classifier, and cached
under ``statistics_key``: dataset, split, count, C x H x W, a hash of the images and the classifier's hash.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from tqdm.auto import tqdm

from ..data import to_unit_range
from ..errors import DdpmkitError
from ..files import atomic_write
from . import LOCAL
from .classifier import SmallClassifier, classifier_input

DEFAULT_CACHE = Path.home() / ".cache" / "ddpmkit" / "statistics"
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
PRC_TORCH_FIDELITY = (0, 4)  # torch_fidelity.metric_prc first shipped in 0.4.0 (0.3.0 has no precision/recall)


class ClassifierFeatures(nn.Module):
    """Images (float in [0, 1], or uint8) -> the classifier's penultimate features, or its logits.

    It stays in eval mode whatever ``.train()`` asks: a feature network with BatchNorm in training mode would
    change the statistics it measures (a known mistake in FID code built on custom networks).
    """

    def __init__(self, classifier: SmallClassifier, logits: bool = False):
        super().__init__()
        self.classifier, self.logits = classifier.eval(), logits

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = classifier_input(images.to(next(self.classifier.parameters()).device))
        return self.classifier(x) if self.logits else self.classifier.features(x)


def classifier_fd_metric(classifier: SmallClassifier, image_shape: tuple[int, int, int]) -> FrechetInceptionDistance:
    """A torchmetrics FID object measuring FD on the classifier's features; feed it float images in [0, 1]."""
    return FrechetInceptionDistance(feature=ClassifierFeatures(classifier), input_img_size=image_shape,
                                    normalize=True, reset_real_features=False, **LOCAL).eval()


def classifier_is_metric(classifier: SmallClassifier, splits: int = 10) -> InceptionScore:
    with warnings.catch_warnings():  # it keeps every sample's logits: a few MB for MNIST-size sample sets
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        return InceptionScore(feature=ClassifierFeatures(classifier, logits=True), splits=splits,
                              normalize=True, **LOCAL).eval()


def _batches(images: torch.Tensor, batch_size: int, desc: str, progress: bool):
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        yield images[start: start + batch_size]


@torch.inference_mode()
def add_real(metric: FrechetInceptionDistance, real_uint8: torch.Tensor, cache_key: str,
             cache_dir: Path | None = DEFAULT_CACHE, batch_size: int = 1000, progress: bool = True) -> bool:
    """Put the real images' feature statistics into ``metric``, from the cache when present; returns True if cached.

    ``real_uint8`` is the real set as uint8 (N, C, H, W); its features are only computed when the cache has no entry
    under ``cache_key`` (``statistics_key`` of the same images).
    """
    path = Path(cache_dir) / f"{cache_key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True)
        for name in REAL_STATES:
            getattr(metric, name).copy_(state[name])
        return True
    for batch in _batches(real_uint8, batch_size, "real features", progress):
        metric.update(to_unit_range(batch), real=True)
    if path is not None:
        with atomic_write(path) as f:
            torch.save({name: getattr(metric, name).cpu() for name in REAL_STATES}, f)
    return False


@torch.inference_mode()
def add_fake(metric, images: torch.Tensor, batch_size: int = 1000, progress: bool = True) -> None:
    """Feed generated float images in [0, 1] to a FID (as fake) or IS metric."""
    for batch in _batches(images, batch_size, "sample features", progress):
        if isinstance(metric, FrechetInceptionDistance):
            metric.update(batch, real=False)
        else:
            metric.update(batch)


def statistics_key(dataset: str, split: str, real_uint8: torch.Tensor, classifier_sha256: str) -> str:
    """The cache name of the real statistics: readable parts, and a hash of the images themselves, since the count,
    size, resizing and channel conversion of a split all change what the statistics describe."""
    n, c, h, w = real_uint8.shape
    content = hashlib.sha256(real_uint8.cpu().contiguous().numpy()).hexdigest()
    return f"fd_{dataset}_{split}_{n}x{c}x{h}x{w}_images-{content[:16]}_classifier-{classifier_sha256[:16]}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def seeded_compute(metric, seed: int = 0):
    """``metric.compute()`` with the global RNG seeded and restored: torchmetrics' Inception Score shuffles the
    images into its splits with ``torch.randperm``, so unseeded it changes from run to run on the same images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return metric.compute()


def check_torch_fidelity_for_prc() -> None:
    """Refuse, with the pip command, a torch-fidelity too old to have precision and recall."""
    import torch_fidelity

    installed = torch_fidelity.__version__
    needed = ".".join(map(str, PRC_TORCH_FIDELITY))
    if tuple(int(part) for part in re.findall(r"\d+", installed)[:2]) < PRC_TORCH_FIDELITY:
        raise DdpmkitError(f"precision/recall (metric prc) needs torch-fidelity>={needed}, but {installed} is "
                           f"installed; run pip install 'torch-fidelity>={needed}', or leave prc out of --metrics")


@torch.inference_mode()
def classifier_precision_recall(classifier: SmallClassifier, real_uint8: torch.Tensor, fake: torch.Tensor,
                                neighbourhood: int = 3, seed: int = 0,
                                batch_size: int = 1000) -> tuple[float, float, int]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) on the classifier's features, computed by
    torch-fidelity's implementation: precision is the fraction of samples inside some real image's k-NN ball,
    recall the fraction of real images inside some sample's ball.

    The k-NN radii depend on how many points a set has, so the real side is a seeded random subset of the split of
    the same size as the samples (the paper compares equal numbers). Returns (precision, recall, real images used).
    """
    check_torch_fidelity_for_prc()
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    count = min(len(fake), len(real_uint8))
    chosen = torch.randperm(len(real_uint8), generator=torch.Generator().manual_seed(seed))[:count]
    features = ClassifierFeatures(classifier)

    def embed(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([features(images[i: i + batch_size]).double().cpu() for i in range(0, len(images),
                                                                                             batch_size)])

    precision, recall = calculate_precision_recall_part(embed(fake[:count]), embed(real_uint8[chosen]),
                                                        neighborhood=neighbourhood)
    return precision, recall, count
