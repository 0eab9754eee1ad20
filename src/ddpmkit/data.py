"""Datasets -> uint8 image tensors (+ labels), and the deterministic batch order the training loop draws from.

Images are kept as uint8 (N, C, H, W) at the model's size; ``to_model_range`` turns a batch into floats in
[-1, 1] (or [0, 1]) on the training device, so small sets can live on the device and never stall the loop. The
conversions between pixel ranges live here, one function each, and everything else calls them: uint8 -> [0, 1]
(``to_unit_range``), [0, 1] or uint8 -> the model's range (``to_model_range``), the model's range -> [0, 1]
(``from_model_range``) and -> uint8 (``to_uint8``).

Where each dataset is looked for, in order:
  MNIST / Fashion-MNIST: ``data.root`` (IDX files, .gz or not, directly or in torchvision's ``*/raw`` layout); for
  Fashion-MNIST the Debian package's ``/usr/share/datasets/fashion-mnist``; torchvision's download into
  ``data.root`` or ``~/.cache/ddpmkit/datasets``.
  CIFAR-10, CelebA: torchvision's own folders under ``data.root`` or the cache, downloaded if allowed.
  folder: ``data.root``; classes are its subfolders when it has any, else the images are unlabelled. Every image
  file is decoded once at load; unreadable ones are left out or stop the run (``data.bad_images``).

``data.max_images`` and the held-out images of a set without a test split are a seeded, class-stratified choice
(``stratified_choice`` with ``SELECTION_SEED``), never the first or last images in file order: an image folder lists
its images class by class.
"""
from __future__ import annotations

import gzip
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets as tvd
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .config import DataConfig
from .errors import DdpmkitError
from .global_batch import BatchSplit

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path.home() / ".cache" / "ddpmkit" / "datasets"
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3
FASHION_MNIST_CLASSES = list(tvd.FashionMNIST.classes)
MNIST_CLASSES = [str(i) for i in range(10)]
IMAGE_SUFFIXES = set(tvd.folder.IMG_EXTENSIONS)
SELECTION_SEED = 0  # seeds which images max_images keeps and which are held out: a config always picks the same ones


@dataclass
class ImageData:
    """A dataset ready for training: either all images in memory, or a map-style dataset for a DataLoader."""

    images: torch.Tensor | None     # (N, C, H, W) uint8 when held in memory
    labels: torch.Tensor | None     # (N,) int64 class indices (in memory or not), or None when unlabelled
    dataset: Dataset | None         # yields (uint8 CHW tensor, label or -1) when not in memory
    class_names: list[str]          # [] when unlabelled
    channels: int
    source: str                     # where the images came from, for the log

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images (already in [0, 1]) as float32."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def to_model_range(images: torch.Tensor, zero_one: bool = False) -> torch.Tensor:
    """uint8 images, or float ones in [0, 1] -> float32 in [-1, 1] (DDPM §4) or, with ``zero_one``, [0, 1]."""
    x = to_unit_range(images)
    return x if zero_one else x * 2 - 1


def from_model_range(x: torch.Tensor, zero_one: bool = False) -> torch.Tensor:
    """Inverse of ``to_model_range`` for floats: the model's range -> [0, 1], clipped."""
    return (x if zero_one else (x + 1) / 2).clamp(0, 1)


def to_uint8(x: torch.Tensor, zero_one: bool = False) -> torch.Tensor:
    """Inverse of ``to_model_range``: the model's range (``zero_one``: [0, 1]) -> uint8, rounded and clipped."""
    return (from_model_range(x, zero_one) * 255).round().to(torch.uint8)


# -- IDX (MNIST-format) files --------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed or not, as a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DdpmkitError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) or len(shape) != ndim:
        raise DdpmkitError(f"{path} is truncated: header says {shape}, file holds {max(len(raw) - offset, 0)} "
                           f"values; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for base in [folder, *sorted(folder.glob("*/raw"))]:
        for suffix in (".gz", ""):
            images = base / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = base / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _load_mnist_like(cfg: DataConfig, split: str, fashion: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    name = "Fashion-MNIST" if fashion else "MNIST"
    candidates = [Path(cfg.root).expanduser()] if cfg.root else []
    if fashion:
        candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        pair = _find_idx_pair(folder, split) if folder.is_dir() else None
        if pair:
            images, labels = read_idx(pair[0]), read_idx(pair[1])
            return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), str(folder)
    if cfg.download:
        root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_ROOT
        cls = tvd.FashionMNIST if fashion else tvd.MNIST
        try:
            ds = cls(str(root), train=split == "train", download=True)
            return ds.data[:, None].clone(), ds.targets.long().clone(), f"torchvision download in {root}"
        except Exception as err:  # no network, a proxy, a half-written file: all mean "not available here"
            reason = f"the download failed ({type(err).__name__}: {err})"
    else:
        reason = "download is off (data.download=false)"
    where = ", ".join(str(c) for c in candidates) or "(no data.root given)"
    debian = (" or install the Debian/Ubuntu package dataset-fashion-mnist (files land in "
              f"{DEBIAN_FASHION_MNIST})" if fashion else "")
    raise DdpmkitError(f"{name} {split} split not found in {where} and {reason}. Fix: put its IDX files "
                       f"({'train' if split == 'train' else 't10k'}-images-idx3-ubyte[.gz] and -labels-) in a "
                       f"folder and pass --set data.root=FOLDER{debian}, or run once with internet access so "
                       f"torchvision can download it")


def _fit_size(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Bring uint8 (N, C, h, w) images to cfg.image_size: zero-pad ("pad", if smaller) or resize."""
    n, c, h, w = images.shape
    size = cfg.image_size
    if (h, w) == (size, size):
        return images
    if cfg.resize_mode == "pad" and h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top))
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _fit_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 0 or images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:  # ITU-R 601-2 luma, as Pillow's convert("L")
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    raise DdpmkitError(f"data.channels must be 0, 1 or 3, got {channels}")


# -- image folders and CelebA (decoded on the fly) ------------------------------------------------------------------

class _FlatImageFolder(Dataset):
    """Image files, unlabelled."""

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(tvd.folder.default_loader(str(self.files[i]))), -1


class _ClassFolders(tvd.ImageFolder):
    """ImageFolder whose classes are the visible subfolders: a hidden .thumbnails or .git is no class."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        return classes, {name: i for i, name in enumerate(classes)}


class _Uint8Images(Dataset):
    """Wraps a PIL-yielding dataset: -> (uint8 CHW at the model's size, label or -1)."""

    def __init__(self, base: Dataset, labelled: bool):
        self.base, self.labelled = base, labelled

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, (int(label) if self.labelled else -1)


def _pil_transform(size: int, channels: int, center_crop: int | None = None):
    steps = [v2.Grayscale(1) if channels == 1 else v2.RGB(), v2.PILToTensor()]
    if center_crop:
        steps.append(v2.CenterCrop(center_crop))
    steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps)


def _image_files(root: Path) -> list[Path]:
    """Files with an image suffix under ``root``, found as ImageFolder finds them (links followed), hidden ones
    (.DS_Store, macOS's ._name.jpg resource forks, anything in .folders) left out."""
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files += [Path(folder, name) for name in names
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files)


def _unreadable(path: Path) -> str | None:
    """Why Pillow cannot decode ``path``, or None when it can; ``load`` decodes every pixel, so truncation shows."""
    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image format Pillow knows"
    except Exception as err:  # broken files raise OSError, SyntaxError, ValueError, struct.error, ... by format
        return str(err) or type(err).__name__
    return None


def _readable_images(root: Path, bad_images: str) -> list[Path]:
    """The image files under ``root`` that decode. Unreadable ones are left out with one line (bad_images="skip")
    or stop the run (bad_images="fail") here, not as a traceback from a DataLoader worker mid-training."""
    files = _image_files(root)
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) + 4)) as pool:  # Pillow decodes without the GIL
        reasons = list(tqdm(pool.map(_unreadable, files), total=len(files), desc=f"checking images in {root}",
                            unit="image", disable=len(files) < 1000, leave=False))
    bad = [(path, reason) for path, reason in zip(files, reasons) if reason]
    if bad and bad_images == "fail":
        raise DdpmkitError(f"{bad[0][0]} is not a readable image ({bad[0][1]}); {len(bad)} of {len(files)} image "
                           f"files under {root} are unreadable: repair or remove them, or --set "
                           f"data.bad_images=skip to train without them")
    if bad:
        names = ", ".join(str(path.relative_to(root)) for path, _ in bad[:3]) + (", ..." if len(bad) > 3 else "")
        print(f"ddpmkit: left out {len(bad)} unreadable image files of {len(files)} under {root} ({names}); "
              f"--set data.bad_images=fail stops instead", file=sys.stderr)
    return [path for path, reason in zip(files, reasons) if not reason]


def _load_folder(cfg: DataConfig) -> tuple[Dataset, list[str], torch.Tensor | None]:
    """(dataset, class names, labels or None) of an image folder; labels come from the file list, not decoding."""
    if not cfg.root:
        raise DdpmkitError("data.dataset=folder needs a folder: pass --set data.root=PATH/TO/IMAGES")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DdpmkitError(f"data.root {root} is not a folder; point it at a folder of images")
    files = _readable_images(root, cfg.bad_images)
    if not files:
        raise DdpmkitError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    transform = _pil_transform(cfg.image_size, cfg.channels or 3)
    if any(path.parent != root for path in files):  # images in subfolders: the subfolders are classes
        readable = {str(path) for path in files}
        try:
            base = _ClassFolders(str(root), transform=transform, is_valid_file=readable.__contains__)
        except FileNotFoundError as err:
            raise DdpmkitError(f"{root}: {err}; every class subfolder needs at least one readable image") from None
        return _Uint8Images(base, labelled=True), list(base.classes), torch.tensor(base.targets, dtype=torch.long)
    return _FlatImageFolder(files, transform), [], None


def _torchvision_dataset(cls, cfg: DataConfig, name: str, **kwargs):
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_ROOT
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    if not cfg.download:
        raise DdpmkitError(f"{name} not found in {root} and download is off. Fix: --set data.download=true with "
                           f"internet access, or --set data.root=FOLDER holding torchvision's {name} files")
    try:
        return cls(str(root), download=True, **kwargs)
    except Exception as err:
        raise DdpmkitError(f"{name} not found in {root} and the download failed ({type(err).__name__}: {err}). "
                           f"Fix: run once with internet access, or place torchvision's {name} files under a "
                           f"folder and pass --set data.root=FOLDER") from None


# -- the entry point ---------------------------------------------------------------------------------------------------

def load_images(cfg: DataConfig, split: str = "train") -> ImageData:
    """Load ``split`` ("train" or "test") of the configured dataset at the configured size."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if cfg.dataset in ("mnist", "fashion_mnist"):
        fashion = cfg.dataset == "fashion_mnist"
        images, labels, source = _load_mnist_like(cfg, split, fashion)
        names = FASHION_MNIST_CLASSES if fashion else MNIST_CLASSES
        return _in_memory(images, labels, names, cfg, source, split)
    if cfg.dataset == "cifar10":
        ds = _torchvision_dataset(tvd.CIFAR10, cfg, "CIFAR-10", train=split == "train")
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return _in_memory(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes), cfg, "torchvision",
                          split)
    if cfg.dataset == "celeba":
        # CelebA's aligned faces are 178x218: crop the central 140x140 face region, then resize (as in DDIM).
        base = _torchvision_dataset(tvd.CelebA, cfg, "CelebA", split="train" if split == "train" else "test",
                                    transform=_pil_transform(cfg.image_size, cfg.channels or 3, center_crop=140))
        dataset, names, labels = _Uint8Images(base, labelled=False), [], None
    elif split == "test":
        raise DdpmkitError("an image folder has no test split; the training loop holds out some of its images instead")
    else:
        dataset, names, labels = _load_folder(cfg)
    channels = cfg.channels or 3
    data = _keep_max_images(ImageData(None, labels, dataset, names, channels, cfg.root or str(DEFAULT_ROOT)), cfg,
                            split)
    size_bytes = len(data) * channels * cfg.image_size**2
    if cfg.in_memory == "yes" or (cfg.in_memory == "auto" and size_bytes < IN_MEMORY_LIMIT_BYTES):
        return load_into_memory(data, cfg.num_workers)
    return data


def _in_memory(images: torch.Tensor, labels: torch.Tensor, names: list[str], cfg: DataConfig,
               source: str, split: str) -> ImageData:
    data = _keep_max_images(ImageData(images, labels, None, names, images.shape[1], source), cfg, split)
    images = _fit_channels(_fit_size(data.images, cfg), cfg.channels)
    return replace(data, images=images, channels=images.shape[1])


# -- choosing images -------------------------------------------------------------------------------------------------

def stratified_choice(num_images: int, n: int, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of a seeded choice of ``n`` of ``num_images`` images that keeps every class in proportion.

    Class k gets n * count_k / num_images places, rounded by largest remainder (ties to the lower class), and at
    least one when n >= the number of classes; within a class, or without labels, the choice is uniform.
    """
    if n >= num_images:
        return torch.arange(num_images)
    labels = torch.zeros(num_images, dtype=torch.long) if labels is None else labels
    _, classes, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota = _largest_remainder(counts, n)
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    order = order[torch.sort(classes[order], stable=True).indices]  # grouped by class, shuffled within
    rank = torch.arange(num_images) - (torch.cumsum(counts, 0) - counts)[classes[order]]  # place within the class
    return order[rank < quota[classes[order]]].sort().values


def _largest_remainder(counts: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` places shared in proportion to ``counts`` (Hamilton's method); then classes left with none, when there
    are places enough, each take one from the class holding the most."""
    quota, remainder = counts * n // counts.sum(), counts * n % counts.sum()
    by_remainder = torch.sort(remainder, descending=True, stable=True).indices
    quota[by_remainder[: n - int(quota.sum())]] += 1
    if n >= len(counts):
        for k in (quota == 0).nonzero().flatten().tolist():
            quota[quota.argmax()] -= 1
            quota[k] = 1
    return quota


def _keep_max_images(data: ImageData, cfg: DataConfig, split: str) -> ImageData:
    """``data.max_images``: that many training images, chosen by ``stratified_choice``; the test split stays whole."""
    if split != "train" or not cfg.max_images or cfg.max_images >= len(data):
        return data
    return subset(data, stratified_choice(len(data), cfg.max_images, SELECTION_SEED, data.labels))


def subset(data: ImageData, indices: torch.Tensor) -> ImageData:
    """The images at ``indices``: indexed when in memory, else a Subset decoded on the fly."""
    labels = data.labels[indices] if data.labels is not None else None
    if data.images is not None:
        return replace(data, images=data.images[indices], labels=labels)
    return replace(data, dataset=Subset(data.dataset, indices.tolist()), labels=labels)


def load_into_memory(data: ImageData, num_workers: int = 0) -> ImageData:
    """``data`` with every image decoded into one uint8 tensor."""
    if data.images is not None:
        return data
    pairs = list(DataLoader(data.dataset, batch_size=256, num_workers=num_workers))
    labels = torch.cat([y for _, y in pairs]) if data.class_names else None
    return replace(data, images=torch.cat([x for x, _ in pairs]), labels=labels, dataset=None)


def hold_out(data: ImageData, n: int, num_workers: int = 0) -> tuple[ImageData, ImageData]:
    """(``n`` held-out images in memory, the rest): a split of ``data`` by ``stratified_choice``."""
    chosen = stratified_choice(len(data), n, SELECTION_SEED, data.labels)
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[chosen] = False
    return load_into_memory(subset(data, chosen), num_workers), subset(data, rest.nonzero().flatten())


# -- batch order -----------------------------------------------------------------------------------------------------

class BatchOrder:
    """Which images make up global batch k (the images of optimizer step k), a pure function of (seed, k).

    The training stream is a sequence of epochs, each a fresh permutation seeded by (seed, epoch). Because it
    holds no state, a resumed run draws exactly the batches the uninterrupted run would have, on any number of
    processes: each takes its slices of every global batch (``global_batch.BatchSplit``).
    """

    def __init__(self, num_images: int, batch_size: int, seed: int):
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _permutation(self, epoch: int, device: torch.device) -> torch.Tensor:
        """Epoch ``epoch``'s permutation on ``device``; the last two epochs are kept (a batch may straddle two), so
        a GPU receives one copy per epoch instead of one per step, which would make the host wait for the GPU."""
        key = (epoch, device)
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {k: v for k, v in self._cache.items() if k[0] == epoch - 1}
            self._cache[key] = torch.randperm(self.num_images, generator=g).to(device)
        return self._cache[key]

    def indices(self, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The image indices of batch k: draws k * batch_size .. (k + 1) * batch_size - 1 of the stream."""
        device = torch.device(device)
        start, stop, parts = k * self.batch_size, (k + 1) * self.batch_size, []
        while start < stop:  # one epoch, or more when the batch straddles a boundary
            epoch, offset = divmod(start, self.num_images)
            take = min(stop - start, self.num_images - offset)
            parts.append(self._permutation(epoch, device)[offset: offset + take])
            start += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class _RankSampler(Sampler):
    """For a DataLoader: rank ``rank``'s micro-batches of steps start..stop-1, so that each process reads (decodes)
    only its own images."""

    def __init__(self, order: BatchOrder, split: BatchSplit, rank: int, start: int, stop: int):
        self.order, self.split, self.rank, self.start, self.stop = order, split, rank, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            batch = self.order.indices(step)
            for micro in range(self.split.grad_accum):
                yield batch[self.split.part(self.rank, micro)].tolist()

    def __len__(self) -> int:
        return (self.stop - self.start) * self.split.grad_accum


def batch_stream(data: ImageData, order: BatchOrder, split: BatchSplit, rank: int, start: int, stop: int,
                 device: torch.device, num_workers: int = 2, seed: int = 0):
    """Yield (uint8 images, labels or None) on ``device``: rank ``rank``'s ``split.grad_accum`` micro-batches of
    each of the steps start..stop-1 (``order`` gives each step's global batch).

    In-memory sets are indexed directly on the device; others go through a DataLoader with workers.
    """
    if data.images is not None:
        images = data.images.to(device)
        labels = data.labels.to(device) if data.labels is not None else None
        for step in range(start, stop):
            batch = order.indices(step, device)
            for micro in range(split.grad_accum):
                idx = batch[split.part(rank, micro)]
                yield images[idx], (labels[idx] if labels is not None else None)
        return
    loader = DataLoader(data.dataset, batch_sampler=_RankSampler(order, split, rank, start, stop),
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))  # else it draws from the global RNG
    for images, labels in loader:
        yield (images.to(device, non_blocking=True),
               labels.to(device, non_blocking=True) if data.class_names else None)
