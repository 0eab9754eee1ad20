"""``evaluate``: generate (or read) samples and measure them against the dataset's real images.

Metrics (names as in ``metrics=``):
  fd        FD-<dataset>-classifier, Frechet distance on the judge classifier's features (offline; MNIST-like data)
  is        the classifier Inception Score
  accuracy  conditional models: the fraction of samples the classifier assigns to the requested class
  prc       improved precision and recall (Kynkaanniemi et al. 2019, torch-fidelity's code) on the classifier's
            features, against an equal number of real images
  fid, kid, inception_is   the standard metrics on TF-FID InceptionV3 features (torchmetrics); they need the
            Inception weights in torch hub's cache or at ``inception_weights``, else they stop with what to download
  reconstruction  DDIM inversion of real images and back, per number of steps: PSNR, SSIM and (backbone weights
            present) LPIPS against the originals; needs a checkpoint
  diversity  mean pairwise LPIPS among samples of one class; skipped with a note when the LPIPS backbone is absent
The report records everything needed to reproduce the numbers: checkpoint hash, sampler, steps, guidance, seeds,
the feature network and its hash, the real split and its size.
"""
from __future__ import annotations

import re
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import distributed
from .build import steps_taken
from .config import DataConfig, resolve_sampler
from .data import ImageData, load_images, to_uint8, to_unit_range
from .errors import DdpmkitError
from .files import write_json
from .metrics.classifier import SmallClassifier, check_compatible, check_labels, load_classifier, predict
from .metrics.domain import (DEFAULT_CACHE, add_fake, add_real, check_torch_fidelity_for_prc, classifier_fd_metric,
                             classifier_is_metric, classifier_precision_recall, file_sha256, seeded_compute,
                             statistics_key)
from .metrics.inception import inception_metrics, to_inception_input
from .metrics.inception import inception_weights as inception_weights_file
from .metrics.perceptual import lpips_diversity, lpips_metric
from .metrics.reconstruction import reconstruction_metrics
from .seeded_sampling import class_blocks
from .viz import write_npz

OFFLINE_METRICS = ("fd", "is", "accuracy", "prc")
SHIPPED_JUDGES = ("mnist", "fashion_mnist")  # datasets with a judge classifier in metrics/weights/
INCEPTION_METRICS = ("fid", "kid", "inception_is")
LPIPS_METRICS = ("reconstruction", "diversity")
METRICS = OFFLINE_METRICS + INCEPTION_METRICS + LPIPS_METRICS
SAMPLE_NAME = re.compile(r"(?:class_(\d+)_)?seed_(\d+)\.png")  # the per-image names ``ddpmkit sample`` writes
SAMPLE_MODES = {"L": 1, "RGB": 3}
SAMPLE_INFO = ("class_names", "resize_mode")  # what an .npz of viz.write_npz records of the model that drew it
_TOO_FEW_FOR_DIVERSITY = ("diversity compares samples of the same class and needs at least two samples of one "
                          "class; raise --num-samples")


def read_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples as float (N, C, H, W) in [0, 1], with labels where known, from an .npz (``arr_0``: uint8 N x H x W x C,
    optional ``labels``), a folder of PNGs (labels when every name is ``class_C_seed_NNNNN.png``) or a folder that
    ``ddpmkit sample`` wrote (its per-image files, not its grid)."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        return _read_npz(path)
    if path.is_dir():
        return _read_folder(path / "images" if _is_sample_output(path) else path)
    raise DdpmkitError(f"samples {path}: expected an .npz file or a folder of PNG images")


def _is_sample_output(folder: Path) -> bool:
    """Whether ``folder`` is what ``ddpmkit sample`` writes: images/ beside grid.png or samples.npz."""
    return (folder / "images").is_dir() and ((folder / "grid.png").is_file() or (folder / "samples.npz").is_file())


def read_sample_info(path: str | Path) -> dict:
    """What samples record of the model that drew them (see viz.write_npz): ``class_names``, what their labels mean,
    and ``resize_mode``, how its training images reached their size. Read from an .npz, or from the samples.npz of
    a folder that ``ddpmkit sample`` wrote; {} where nothing is recorded (a plain folder of PNGs)."""
    path = Path(path)
    if path.is_dir() and _is_sample_output(path):
        path = path / "samples.npz"
    if path.suffix != ".npz" or not path.is_file():
        return {}
    data = _load_npz(path)
    return {key: data[key].tolist() for key in SAMPLE_INFO if key in data}


def _load_npz(path: Path):
    try:
        return np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DdpmkitError(f"{path} is not a readable .npz file ({err})") from None


def _read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    data = _load_npz(path)
    if "arr_0" not in data:
        raise DdpmkitError(f"{path} has no arr_0 array (uint8, N x H x W x C)")
    images = data["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in SAMPLE_MODES.values():
        raise DdpmkitError(f"{path}: arr_0 is {images.dtype} of shape {images.shape}; expected uint8 N x H x W x C "
                           f"with C = 1 or 3")
    labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
    if labels is not None and len(labels) != len(images):
        raise DdpmkitError(f"{path}: {len(labels)} labels for {len(images)} images")
    return to_unit_range(torch.from_numpy(images).permute(0, 3, 1, 2)), labels


def _read_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    files = sorted(folder.rglob("*.png"))
    if not files:
        raise DdpmkitError(f"no .png images under {folder}")
    names = [SAMPLE_NAME.fullmatch(f.name) for f in files]
    if all(names):  # ddpmkit sample's names: the order it drew them in, class after class, by seed
        order = sorted(range(len(files)), key=lambda i: (int(names[i][1] or 0), int(names[i][2])))
        files, names = [files[i] for i in order], [names[i] for i in order]
    arrays = [_read_png(f) for f in files]
    for f, array in zip(files, arrays):
        if array.shape != arrays[0].shape:
            raise DdpmkitError(f"{f}: {_describe(array)}, but {files[0].name} is {_describe(arrays[0])}; all samples "
                               f"must have one size and one channel count")
    labels = torch.tensor([int(m[1]) for m in names]) if all(m and m[1] is not None for m in names) else None
    return to_unit_range(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)), labels


def _read_png(path: Path) -> np.ndarray:
    """One image as uint8 H x W x C: C = 1 for mode L, 3 for RGB."""
    try:
        with Image.open(path) as picture:
            mode = picture.mode
            array = np.asarray(picture) if mode in SAMPLE_MODES else None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's UnidentifiedImageError is an OSError
        raise DdpmkitError(f"{path} is not a readable image ({err})") from None
    if array is None:
        raise DdpmkitError(f"{path}: mode {mode} is not supported; save samples as greyscale (L) or RGB PNGs")
    return array[..., None] if array.ndim == 2 else array


def _describe(array: np.ndarray) -> str:
    h, w, c = array.shape
    return f"{h}x{w} {'L' if c == 1 else 'RGB'}"


def draw_for_metrics(model, num_samples, seed, guidance, **options) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """``num_samples`` images with seeds seed .. seed + num_samples - 1, one seed per image as FD and precision/recall
    assume independent draws (``sample_classes`` would give every class the same starting noises). A conditional
    model draws equal numbers of every class, class after class. Returns (images, labels or None, seeds)."""
    labels = None
    if model.is_conditional:
        classes = len(model.class_names)
        if num_samples % classes:
            raise DdpmkitError(f"num_samples={num_samples} must be a multiple of the model's {classes} classes")
        labels = class_blocks(num_samples, classes)
    elif guidance:
        raise DdpmkitError("guidance needs a class-conditional model")
    seeds = list(range(seed, seed + num_samples))
    images = model.generate(seeds, labels, guidance=guidance, **options)
    return images, None if labels is None else torch.tensor(labels), seeds


def evaluate(checkpoint: str | Path | None = None, samples: str | Path | None = None, *,
             num_samples: int = 1000,          # generated images (a multiple of the classes for conditional models)
             sampler: str | None = None,       # a sampler name; None: the model's default (config.default_sampler)
             steps: int | None = None,         # sampler steps; None: the sampler's default (config.DEFAULT_STEPS)
             eta: float = 0.0,                 # DDIM noise scale
             guidance: float = 0.0,            # classifier-free guidance weight w (conditional models)
             spacing: str | None = None,       # timestep spacing (samplers.SPACINGS); None: trailing
             threshold: float | None = None,   # dynamic thresholding quantile of predicted x_0; None: clipping
             guidance_rescale: float = 0.0,    # Lin et al.'s guidance rescale phi; 0: off
             shift: float | None = None,       # flow models: the sampling times' shift (SD3 eq. 23); None: its own
             rho: float | None = None,         # edm models: the sampling levels' rho (EDM eq. 5); None: its own
             metrics: tuple[str, ...] = OFFLINE_METRICS,  # any of METRICS
             dataset: str | None = None,       # the real data; default: the checkpoint's
             data_root: str = "",              # where the real data is (see data.root); default: the checkpoint's
             resize_mode: str | None = None,   # samples: real images padded or resized (None: as recorded, else pad)
             split: str = "test",              # real split compared against: test or train
             classifier: str | Path | None = None,  # judge weights; default: the shipped ones for the dataset
             seed: int = 0,                    # image i uses seed + i (classes in blocks: no noise is shared)
             batch_size: int = 500,            # images per forward pass; results don't depend on it
             device: str = "auto",
             precision: str = "auto",          # network precision: auto (bf16 where the device has it), fp32, bf16
             compile: str | None = None,       # torch.compile the network: None, auto or a mode (see DiffusionSampler)
             cache_dir: str | Path | None = DEFAULT_CACHE,  # real-statistics cache; None: no cache
             inception_weights: str | Path | None = None,   # the TF-FID InceptionV3 weights, if not in the hub cache
             inversion_steps: tuple[int, ...] = (10, 20, 50),  # reconstruction: DDIM step counts to measure
             inversion_images: int = 200,      # reconstruction: the first N real images of the split
             inversion_refine: int = 0,        # reconstruction: fixed-point iterations per inversion step
             lpips_net: str = "alex",          # LPIPS backbone: alex, vgg or squeeze
             lpips_weights: str | Path | None = None,  # its torchvision weights, if not in the hub cache
             diversity_pairs: int = 1000,      # diversity: at most this many image pairs per class
             save_samples: str | Path | None = None,  # also write the generated samples to this .npz
             progress: bool = True) -> dict | None:
    """Measure samples from ``checkpoint`` (or read from ``samples``) and return the report dict. Under torchrun
    the processes share the sampling out and rank 0 measures; the others return None."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise DdpmkitError(f"unknown metric(s) {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
    if (checkpoint is None) == (samples is None):
        raise DdpmkitError("evaluate needs exactly one of a checkpoint (to generate samples) or --samples")
    if "reconstruction" in metrics and checkpoint is None:
        raise DdpmkitError("the reconstruction metric inverts real images with a model: give --checkpoint")
    if resize_mode not in (None, "pad", "resize"):
        raise DdpmkitError(f"resize_mode must be pad or resize, got {resize_mode!r}")
    wanted_inception = set(INCEPTION_METRICS) & set(metrics)
    weights = inception_weights_file(inception_weights) if wanted_inception else None  # fail before sampling
    if "prc" in metrics:
        check_torch_fidelity_for_prc()
    started = time.perf_counter()
    report: dict = {"metrics": {}}
    notes: list[str] = []
    lpips = _lpips_or_note(lpips_net, lpips_weights, notes) if set(LPIPS_METRICS) & set(metrics) else None
    model = None
    images = labels = None
    if checkpoint is not None:
        from .sampling import DiffusionSampler

        model = DiffusionSampler(checkpoint, device=device, precision=precision, compile=compile)
        sampler = resolve_sampler(model.family, sampler)
        real_cfg = real_config_of_model(model.config.data, dataset, data_root, resize_mode)
        judge = _judge(metrics, classifier, real_cfg.dataset)
        if judge is not None:  # before sampling: a judge that does not fit stops at once
            channels, size, _ = model.image_shape
            check_compatible(judge[1], model.class_names, size, channels, real_cfg.resize_mode)
        real = distributed.main_only(load_images, real_cfg, split)  # before sampling: a missing dataset stops at once
        dataset, image_size = real_cfg.dataset, real_cfg.image_size
        report["samples"] = {"checkpoint": str(model.weights_file),  # the file read: final.pt of a run directory
                             "checkpoint_sha256": file_sha256(model.weights_file),
                             "precision": model.precision, "device": str(model.device)}
        per_class = num_samples // len(model.class_names) if model.is_conditional else num_samples
        if "diversity" in metrics and per_class < 2:  # say so before sampling, not after
            raise DdpmkitError(_TOO_FEW_FOR_DIVERSITY)
        if set(metrics) - {"reconstruction"}:
            solver = {"spacing": spacing, "threshold": threshold, "guidance_rescale": guidance_rescale,
                      **{k: v for k, v in (("shift", shift), ("rho", rho)) if v is not None}}
            images, labels, seeds = draw_for_metrics(model, num_samples, seed, guidance, sampler=sampler, steps=steps,
                                              eta=eta, batch_size=batch_size, progress=progress, **solver)
            report["samples"].update(sampler=sampler, steps=steps_taken(model.config, sampler, steps), eta=eta,
                                     guidance=guidance, **solver,
                                     num_samples=len(images), seeds=f"{seeds[0]}..{seeds[-1]}")
            if labels is not None:
                report["samples"]["labels"] = f"{per_class} of each class, class after class"
            if save_samples and distributed.is_main():
                report["samples"]["saved"] = str(write_npz(images, save_samples, seeds,
                                                           None if labels is None else labels.tolist(),
                                                           **model.recorded_with_samples))
    else:
        if dataset is None:
            raise DdpmkitError("--samples needs --dataset to know which real images to compare with")
        judge = _judge(metrics, classifier, dataset)
        images, labels = read_samples(samples)
        recorded = read_sample_info(samples)
        real_cfg = DataConfig(dataset=dataset, root=data_root, image_size=images.shape[-1],
                              resize_mode=_resize_mode_of_samples(resize_mode, recorded), download=False)
        images, real = _real_for_samples(images, real_cfg, split)
        image_size = images.shape[-1]
        if judge is not None:
            check_compatible(judge[1], recorded.get("class_names", []), image_size, images.shape[1],
                             real_cfg.resize_mode, judged="the samples")
            if not recorded.get("class_names"):
                check_labels(judge[1], labels)
        report["samples"] = {"path": str(samples), "num_samples": len(images)}
        if "diversity" in metrics and (len(images) < 2 or (labels is not None and labels.bincount().max() < 2)):
            raise DdpmkitError(_TOO_FEW_FOR_DIVERSITY)
    if not distributed.is_main():  # under torchrun: this process's samples went to rank 0, which measures them
        return None
    generated_s = time.perf_counter() - started
    if images is not None:  # measure what a PNG or .npz of the samples holds, so that --samples gives the same numbers
        images = to_unit_range(to_uint8(images, zero_one=True))

    report["real"] = {"dataset": dataset, "split": split, "count": len(real), "source": real.source,
                      "image_shape": [real.channels, image_size, image_size], "resize_mode": real_cfg.resize_mode}
    if set(OFFLINE_METRICS) & set(metrics):
        _domain_metrics(report, metrics, images, labels, real, dataset, split, judge, cache_dir, progress)
    if wanted_inception:
        _inception_metrics(report, wanted_inception, weights, images, real, batch_size)
    if "reconstruction" in metrics:
        _reconstruction(report, model, real, inversion_steps, inversion_images, inversion_refine, batch_size,
                        lpips, progress)
    if "diversity" in metrics and lpips is not None:
        mean, pairs = lpips_diversity(lpips, images, labels, diversity_pairs, seed, batch_size)
        report["metrics"]["lpips_diversity"] = mean
        report["diversity"] = {"pairs": pairs, "of": "samples of the same class" if labels is not None
                               else "all samples", "lpips_net": lpips_net}
    if notes:
        report["notes"] = notes
    report["seconds"] = {"sampling": round(generated_s, 1), "total": round(time.perf_counter() - started, 1)}
    return report


def _judge(metrics: tuple[str, ...], classifier: str | Path | None,
           dataset: str) -> tuple[SmallClassifier, dict] | None:
    """The judge classifier and its record, loaded before any sampling, when the metrics use one (None otherwise);
    ddpmkit ships judges for the MNIST-like datasets only."""
    wanted = sorted(set(OFFLINE_METRICS) & set(metrics))
    if not wanted:
        return None
    if classifier is None and dataset not in SHIPPED_JUDGES:
        raise DdpmkitError(f"{', '.join(wanted)} use a judge classifier, and ddpmkit ships one for "
                           f"{' and '.join(SHIPPED_JUDGES)} only, not {dataset}; measure {dataset} with --metrics "
                           f"fid,kid,inception_is, or pass --classifier PATH")
    return load_classifier(classifier or dataset)


def _resize_mode_of_samples(asked: str | None, recorded: dict) -> str:
    """How the real images reach the samples' size: as the samples' model saw its training images, where the samples
    record it; else ``--resize-mode`` (default pad)."""
    trained = recorded.get("resize_mode")
    if asked is not None and trained is not None and asked != trained:
        raise DdpmkitError(f"--resize-mode {asked}: the samples' model was trained with data.resize_mode={trained}, "
                           f"and evaluate compares with the real images fitted as that model saw them; leave "
                           f"--resize-mode out")
    return asked or trained or "pad"


def real_config_of_model(data: DataConfig, dataset: str | None, data_root: str,
                          resize_mode: str | None) -> DataConfig:
    """The real images as the model saw them in training: its size, resizing and channels, and its data root unless
    ``data_root`` is given. The whole split, whatever the run's ``max_images``."""
    if resize_mode not in (None, data.resize_mode):
        raise DdpmkitError(f"resize_mode={resize_mode}: this model was trained with data.resize_mode="
                           f"{data.resize_mode}, and evaluate compares with the images as the model saw them; leave "
                           f"--resize-mode out (it is for --samples)")
    dataset = dataset or data.dataset
    root = data_root or (data.root if dataset == data.dataset else "")
    return DataConfig(dataset=dataset, root=root, image_size=data.image_size, resize_mode=data.resize_mode,
                      channels=data.channels, download=False)


def _real_for_samples(images: torch.Tensor, cfg: DataConfig, split: str) -> tuple[torch.Tensor, ImageData]:
    """The samples and the real split with the samples' channel count. Greyscale samples stored as RGB (three equal
    channels, as ``ddpmkit sample`` used to write them) count as 1 channel when the dataset's own images have 1."""
    if images.shape[-1] != images.shape[-2]:
        raise DdpmkitError(f"the samples are {images.shape[-2]}x{images.shape[-1]}; evaluate compares square images")
    real = load_images(cfg, split)  # cfg.channels = 0: the dataset's own
    if real.channels == 1 and images.shape[1] == 3 and bool((images == images[:, :1]).all()):
        images = images[:, :1]
    if images.shape[1] != real.channels:
        real = load_images(replace(cfg, channels=images.shape[1]), split)
    return images, real


def _lpips_or_note(net: str, weights: str | Path | None, notes: list[str]):
    """The LPIPS metric, or None with the reason (what to download where) added to ``notes``."""
    try:
        return lpips_metric(net, weights)
    except FileNotFoundError as missing:
        notes.append(f"LPIPS skipped: {missing}")
        return None
    except ValueError as bad:
        raise DdpmkitError(str(bad)) from None


def _domain_metrics(report, metrics, images, labels, real, dataset, split, judge, cache_dir, progress) -> None:
    """FD-<dataset>-classifier, classifier IS, accuracy and precision/recall on the judge classifier (checked to fit
    the images already)."""
    clf, info = judge
    clf.to(images.device)
    report["feature_network"] = {"name": f"ddpmkit SmallClassifier ({info['dataset']})", "sha256": info["sha256"],
                                 "test_accuracy": info["test_accuracy"]}
    if "fd" in metrics:
        fd = classifier_fd_metric(clf, tuple(images.shape[1:]))
        key = statistics_key(dataset, split, real.images, info["sha256"])
        cached = add_real(fd, real.images, key, cache_dir, progress=progress)
        add_fake(fd, images, progress=progress)
        report["metrics"][f"fd_{dataset}_classifier"] = float(fd.compute())
        report["real"].update(statistics="cache" if cached else "computed", statistics_key=key)
    if "is" in metrics:
        inception_score = classifier_is_metric(clf)
        add_fake(inception_score, images, progress=progress)
        mean, std = seeded_compute(inception_score)
        report["metrics"]["classifier_is"] = float(mean)
        report["metrics"]["classifier_is_std"] = float(std)
    if "accuracy" in metrics and labels is not None:
        report["metrics"]["accuracy"] = float((predict(clf, images) == labels).float().mean())
    if "prc" in metrics:
        precision, recall, count = classifier_precision_recall(clf, real.images, images)
        report["metrics"]["precision"], report["metrics"]["recall"] = precision, recall
        report["precision_recall"] = {"neighbourhood_k": 3, "real_images": count,
                                      "real_subset": "seeded random subset of the split (seed 0)"}


def _inception_metrics(report, names, weights, images, real, batch_size) -> None:
    """FID, KID and Inception IS on the TF-FID InceptionV3 network."""
    inception = inception_metrics(names, weights, kid_subset=min(1000, len(images), len(real)))
    report["inception_network"] = {"file": str(weights), "sha256": file_sha256(weights)}
    for name, metric in inception.items():
        with torch.inference_mode():
            if name in ("fid", "kid"):
                for start in range(0, len(real), batch_size):
                    metric.update(to_inception_input(to_unit_range(real.images[start: start + batch_size])),
                                  real=True)
            for start in range(0, len(images), batch_size):
                batch = to_inception_input(images[start: start + batch_size])
                if name in ("fid", "kid"):
                    metric.update(batch, real=False)
                else:
                    metric.update(batch)
        value = seeded_compute(metric)
        if isinstance(value, tuple):  # KID and IS return (mean, std)
            report["metrics"][name], report["metrics"][f"{name}_std"] = float(value[0]), float(value[1])
        else:
            report["metrics"][name] = float(value)


def _reconstruction(report, model, real, steps_list, count, refine, batch_size, lpips, progress) -> None:
    """PSNR / SSIM / LPIPS of inversion (DDIM's, or an edm or flow model's ODE run towards noise) and decoding of
    the first ``count`` real images, per step count."""
    if count < 1 or not steps_list:
        raise DdpmkitError("reconstruction needs inversion_images >= 1 and at least one step count")
    for steps in steps_list:  # every step count is checked before any work is done
        model.check_steps(steps)
    originals = to_unit_range(real.images[:count])
    labels = real.labels[:count] if model.is_conditional and real.labels is not None else None
    split = f"{report['real']['dataset']} {report['real']['split']} split"
    report["reconstruction"] = {"images": len(originals), "of": f"the first {len(originals)} of the {split}",
                                "refine": refine, "labels": "true classes" if labels is not None else "none (null)",
                                "decoder": ("DDIM eta=0, no clipping" if model.objective == "ddpm" else
                                            f"Euler over the {model.objective} model's levels"), "per_steps": {}}
    for steps in steps_list:
        row = reconstruction_metrics(model, originals, labels, steps, refine=refine, batch_size=batch_size,
                                     lpips=lpips, progress=progress)
        report["reconstruction"]["per_steps"][str(steps)] = row
        for name in ("psnr", "ssim", "lpips"):
            if name in row:
                report["metrics"][f"{name}_inversion_{steps}"] = row[name]


def format_report(report: dict) -> str:
    """The metrics as an aligned two-column table."""
    rows = [(name, f"{value:.4f}") for name, value in report["metrics"].items()]
    width = max(len(name) for name, _ in rows) if rows else 0
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_report(report: dict, path: str | Path) -> Path:
    return write_json(path, report)
