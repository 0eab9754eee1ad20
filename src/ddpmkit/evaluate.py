"""``evaluate``: generate (or read) samples and measure them against the dataset's real images.

Metrics (names as in ``metrics=``):
  fd        FD-<dataset>-classifier, Frechet distance on the judge classifier's features (offline; MNIST-like data)
  is        the classifier Inception Score
  accuracy  conditional models: the fraction of samples the classifier assigns to the requested class
  fid, kid, inception_is   the standard metrics on TF-FID InceptionV3 features (torchmetrics); they need the
            Inception weights in torch hub's cache or at ``inception_weights``, else they stop with what to download
The report records everything needed to reproduce the numbers: checkpoint hash, sampler, steps, guidance, seeds,
the feature network and its hash, the real split and its size.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DataConfig
from .data import load_images
from .errors import DdpmkitError
from .metrics.classifier import check_compatible, load_classifier, predict
from .metrics.domain import (DEFAULT_CACHE, add_fake, add_real, classifier_fd_metric, classifier_is_metric,
                             file_sha256, statistics_key)
from .metrics.inception import inception_metrics, to_inception_input
from .metrics.inception import inception_weights as inception_weights_file

OFFLINE_METRICS = ("fd", "is", "accuracy")
INCEPTION_METRICS = ("fid", "kid", "inception_is")
METRICS = OFFLINE_METRICS + INCEPTION_METRICS


def read_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples from an .npz (``arr_0``: uint8 N x H x W x C, optional ``labels``) or a folder of images, as float
    (N, C, H, W) in [0, 1], with labels when the .npz has them."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        data = np.load(path)
        if "arr_0" not in data:
            raise DdpmkitError(f"{path} has no arr_0 array (uint8, N x H x W x C)")
        images = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).float() / 255
        return images, (torch.from_numpy(data["labels"]).long() if "labels" in data else None)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.png"))
        if not files:
            raise DdpmkitError(f"no .png images under {path}")
        arrays = [np.asarray(Image.open(f)) for f in files]
        stacked = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255, None
    raise DdpmkitError(f"samples {path}: expected an .npz file or a folder of PNG images")


def _generate(checkpoint, num_samples, sampler_name, steps, eta, guidance, seed, batch_size, device, progress):
    from .sampling import DiffusionSampler

    sampler = DiffusionSampler(checkpoint, device=device)
    options = {"sampler": sampler_name, "steps": steps, "eta": eta, "batch_size": batch_size, "progress": progress}
    if sampler.is_conditional:  # equal numbers of every class, labels kept for the accuracy
        classes = len(sampler.class_names)
        if num_samples % classes:
            raise DdpmkitError(f"num_samples={num_samples} must be a multiple of the model's {classes} classes")
        images, labels = sampler.sample_classes("all", num_samples // classes, seed=seed, guidance=guidance,
                                                **options)
    else:
        if guidance:
            raise DdpmkitError("guidance needs a class-conditional model")
        images, labels = sampler.sample(num_samples, seed=seed, **options), None
    return images, labels, sampler.config.data, sampler.class_names


def evaluate(checkpoint: str | Path | None = None, samples: str | Path | None = None, *,
             num_samples: int = 1000,          # generated images (a multiple of the classes for conditional models)
             sampler: str = "ddpm",            # ddpm, deterministic or ddim
             steps: int | None = None,         # sampler steps; None: all T (ddim: 50)
             eta: float = 0.0,                 # DDIM noise scale
             guidance: float = 0.0,            # classifier-free guidance weight w (conditional models)
             metrics: tuple[str, ...] = OFFLINE_METRICS,  # any of METRICS
             dataset: str | None = None,       # the real data; default: the checkpoint's
             data_root: str = "",              # where the real data is (see data.root)
             split: str = "test",              # real split compared against: test or train
             classifier: str | Path | None = None,  # judge weights; default: the shipped ones for the dataset
             seed: int = 0,                    # image i (or image j of every class) uses seed + i (+ j)
             batch_size: int = 500,            # images per forward pass; results don't depend on it
             device: str = "auto",
             cache_dir: str | Path | None = DEFAULT_CACHE,  # real-statistics cache; None: no cache
             inception_weights: str | Path | None = None,   # the TF-FID InceptionV3 weights, if not in the hub cache
             progress: bool = True) -> dict:
    """Measure samples from ``checkpoint`` (or read from ``samples``) and return the report dict."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise DdpmkitError(f"unknown metric(s) {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
    if (checkpoint is None) == (samples is None):
        raise DdpmkitError("evaluate needs exactly one of a checkpoint (to generate samples) or --samples")
    wanted_inception = set(INCEPTION_METRICS) & set(metrics)
    weights = inception_weights_file(inception_weights) if wanted_inception else None  # fail before sampling
    started = time.perf_counter()
    report: dict = {"metrics": {}}
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        ckpt_file = checkpoint / "final.pt" if checkpoint.is_dir() else checkpoint
        images, labels, data_cfg, class_names = _generate(checkpoint, num_samples, sampler, steps, eta, guidance,
                                                          seed, batch_size, device, progress)
        report["samples"] = {"checkpoint": str(ckpt_file), "checkpoint_sha256": file_sha256(ckpt_file),
                             "sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance,
                             "num_samples": len(images), "seeds": f"{seed}..{seed + len(images) - 1}"
                             if labels is None else f"{seed}..{seed + len(images) // len(class_names) - 1} per class"}
        dataset = dataset or data_cfg.dataset
        image_size = data_cfg.image_size
    else:
        images, labels = read_samples(samples)
        if dataset is None:
            raise DdpmkitError("--samples needs --dataset to know which real images to compare with")
        image_size, class_names = images.shape[-1], []
        report["samples"] = {"path": str(samples), "num_samples": len(images)}
    generated_s = time.perf_counter() - started

    clf, info = load_classifier(classifier or dataset)
    clf.to(images.device)
    real = load_images(DataConfig(dataset=dataset, root=data_root, image_size=image_size, download=False), split)
    if class_names:
        check_compatible(info, class_names, image_size)
    feature_net = {"name": f"ddpmkit SmallClassifier ({info['dataset']})", "sha256": info["sha256"],
                   "test_accuracy": info["test_accuracy"]}
    report["feature_network"] = feature_net
    report["real"] = {"dataset": dataset, "split": split, "count": len(real), "source": real.source}

    if "fd" in metrics:
        fd = classifier_fd_metric(clf, tuple(images.shape[1:]))
        key = statistics_key(dataset, split, image_size, info["sha256"])
        cached = add_real(fd, real.images, key, cache_dir, progress=progress)
        add_fake(fd, images, progress=progress)
        report["metrics"][f"fd_{dataset}_classifier"] = float(fd.compute())
        report["real"]["statistics"] = "cache" if cached else "computed"
    if "is" in metrics:
        inception_score = classifier_is_metric(clf)
        add_fake(inception_score, images, progress=progress)
        mean, std = inception_score.compute()
        report["metrics"]["classifier_is"] = float(mean)
        report["metrics"]["classifier_is_std"] = float(std)
    if "accuracy" in metrics and labels is not None:
        report["metrics"]["accuracy"] = float((predict(clf, images) == labels).float().mean())
    if wanted_inception:
        inception = inception_metrics(wanted_inception, weights, kid_subset=min(1000, len(images), len(real)))
        report["inception_network"] = {"file": str(weights), "sha256": file_sha256(weights)}
        for name, metric in inception.items():
            with torch.inference_mode():
                if name in ("fid", "kid"):
                    for start in range(0, len(real), batch_size):
                        metric.update(to_inception_input(real.images[start: start + batch_size].float() / 255),
                                      real=True)
                for start in range(0, len(images), batch_size):
                    batch = to_inception_input(images[start: start + batch_size])
                    if name in ("fid", "kid"):
                        metric.update(batch, real=False)
                    else:
                        metric.update(batch)
            value = metric.compute()
            if isinstance(value, tuple):  # KID and IS return (mean, std)
                report["metrics"][name], report["metrics"][f"{name}_std"] = float(value[0]), float(value[1])
            else:
                report["metrics"][name] = float(value)
    report["seconds"] = {"sampling": round(generated_s, 1), "total": round(time.perf_counter() - started, 1)}
    return report


def format_report(report: dict) -> str:
    """The metrics as an aligned two-column table."""
    rows = [(name, f"{value:.4f}") for name, value in report["metrics"].items()]
    width = max(len(name) for name, _ in rows) if rows else 0
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
