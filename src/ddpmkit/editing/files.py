"""What ``ddpmkit inpaint`` and ``ddpmkit edit`` read and write: input pictures checked against the model, and an
output folder with a before / mask / after grid, each result as a PNG and all of them in one .npz."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import IMAGE_SUFFIXES, load_images
from ..errors import DdpmkitError
from ..files import write_folder_atomically
from ..viz import save_labelled_grid, save_png, write_npz

_CHANNELS = {"1": 1, "L": 1, "LA": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "RGBA": 3, "P": 3, "CMYK": 3, "YCbCr": 3}


def _picture_files(paths: Sequence[str | Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith("."))
            if not found:
                raise DdpmkitError(f"no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DdpmkitError(f"input {path} does not exist; give picture files or folders of them")
    return files


def read_pictures(paths: Sequence[str | Path], image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[str]]:
    """Picture files and folders -> uint8 (N, C, H, W) and each picture's name. A picture must already have the
    model's size and channel count (greyscale or colour): one line names the first that does not."""
    channels, height, width = image_shape
    arrays, names = [], []
    for path in _picture_files(paths):
        try:
            with Image.open(path) as picture:
                picture.load()
                mode, size = picture.mode, picture.size
                converted = picture.convert("L" if channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise DdpmkitError(f"{path} is not a readable picture ({err})") from None
        if _CHANNELS.get(mode, channels) != channels:
            kind = "greyscale" if channels == 1 else "colour (RGB)"
            raise DdpmkitError(f"{path} has {_CHANNELS[mode]} channel(s) (mode {mode}) but the model draws "
                               f"{channels}-channel images; convert it to {kind}")
        if size != (width, height):
            raise DdpmkitError(f"{path} is {size[0]}x{size[1]} pixels but the model draws {width}x{height}; resize "
                               f"it to {width}x{height}")
        array = np.asarray(converted)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        names.append(path.stem)
    return torch.from_numpy(np.stack(arrays)), names


def dataset_pictures(sampler, count: int, splits: Sequence[str] = ("test", "train")
                     ) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """The first ``count`` pictures of the model's own dataset (the first of ``splits`` that is on this machine:
    nothing is downloaded), their names and labels: something to edit without pictures of one's own."""
    for split in splits:
        try:
            data = load_images(replace(sampler.config.data, download=False, in_memory="no"), split)
        except (DdpmkitError, OSError):
            continue
        if data.images is not None:
            images = data.images[:count]
            labels = data.labels[:count] if data.labels is not None else None
        else:  # a dataset read picture by picture (CIFAR-10, CelebA, an image folder)
            pairs = [data.dataset[i] for i in range(min(count, len(data.dataset)))]
            images = torch.stack([image for image, _ in pairs])
            labels = torch.tensor([int(label) for _, label in pairs]) if data.class_names else None
        return images, [f"{split}_{i:05d}" for i in range(len(images))], labels
    raise DdpmkitError(f"the model's dataset ({sampler.config.data.dataset}) is not here to pick pictures from; give "
                       f"--input pictures")


def write_edits(output: str | Path, originals: torch.Tensor, results: torch.Tensor, names: list[str],
                seeds: list[int], labels: list[int] | None, masks: torch.Tensor | None = None,
                **recorded) -> Path:
    """OUTPUT/grid.png (a row per input: before, the mask shown grey when inpainting, then each result),
    OUTPUT/images/NAME_SEED.png and OUTPUT/results.npz (write_npz: arr_0, seeds, labels); the folder appears
    whole or not at all."""
    per_image = len(results) // len(originals)
    unit = originals.float() / 255 if originals.dtype == torch.uint8 else originals
    columns = [unit]
    if masks is not None:
        columns.append(torch.where(masks > 0.5, torch.full_like(unit, 0.5), unit))
    rows = [torch.cat([c[i: i + 1] for c in columns] + [results[i * per_image: (i + 1) * per_image]])
            for i in range(len(originals))]
    headings = ["before"] + (["mask"] if masks is not None else []) + [f"after {j + 1}" for j in range(per_image)]

    def fill(folder: Path) -> None:
        (folder / "images").mkdir()
        for k, (image, seed) in enumerate(zip(results, seeds)):
            save_png(image, folder / "images" / f"{names[k // per_image]}_seed_{seed:05d}.png")
        write_npz(results, folder / "results.npz", seeds, labels, **recorded)
        save_labelled_grid(torch.cat(rows), folder / "grid.png", len(headings), col_labels=headings)

    return write_folder_atomically(output, fill)
