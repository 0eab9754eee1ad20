"""Inpainting masks: 1 where the model generates, 0 where the image is known (the PNG convention: white = generate).

A mask is a float tensor (N, 1, H, W) of zeros and ones, one per image; a named shape gives every image the same
mask except ``random-boxes``, which draws each image's boxes from that image's seed.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DdpmkitError

MASK_SHAPES = ("left", "right", "top", "bottom", "centre", "random-boxes")
_SPELLINGS = {"center": "centre"}  # both spellings are in use; one shape


def shape_mask(name: str, size: int, seed: int = 0) -> torch.Tensor:
    """The named shape as a (1, size, size) mask: a half of the image (``left`` ... ``bottom``), the central square
    of half the side (``centre``), or 2 to 4 boxes of a quarter to a half of the side each, placed by ``seed``
    (``random-boxes``)."""
    name = _SPELLINGS.get(name, name)
    mask = torch.zeros(1, size, size)
    half, quarter = size // 2, size // 4
    if name == "left":
        mask[..., :half] = 1
    elif name == "right":
        mask[..., half:] = 1
    elif name == "top":
        mask[..., :half, :] = 1
    elif name == "bottom":
        mask[..., half:, :] = 1
    elif name == "centre":
        mask[..., quarter: quarter + half, quarter: quarter + half] = 1
    elif name == "random-boxes":
        rng = np.random.default_rng(seed)
        for _ in range(rng.integers(2, 5)):
            h, w = rng.integers(max(1, quarter), max(2, half) + 1, size=2)
            top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            mask[..., top: top + h, left: left + w] = 1
    else:
        raise DdpmkitError(f"unknown mask {name!r}: give a PNG file (white = generate) or one of "
                           f"{', '.join(MASK_SHAPES)}")
    return mask


def read_mask(path: str | Path, size: int) -> torch.Tensor:
    """A PNG (or any image Pillow reads) as a (1, size, size) mask: pixels brighter than half white are generated."""
    path = Path(path)
    if not path.is_file():
        raise DdpmkitError(f"mask file {path} does not exist; give a PNG (white = generate) or one of "
                           f"{', '.join(MASK_SHAPES)}")
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise DdpmkitError(f"mask {path} is not a readable image ({err}); give a PNG, white = generate") from None
    if grey.shape != (size, size):
        raise DdpmkitError(f"mask {path} is {grey.shape[1]}x{grey.shape[0]} pixels but the model draws "
                           f"{size}x{size} images; give a mask of that size")
    return torch.from_numpy(grey >= 128).float()[None]


def masks_for(spec: str | Path | torch.Tensor, count: int, size: int, seeds: Sequence[int]) -> torch.Tensor:
    """(count, 1, size, size) masks from a shape name, a mask file, or a tensor (H, W), (1, H, W) or (N, 1, H, W)
    of zeros and ones (anything > 0.5 is generated); ``seeds``: one per image, for ``random-boxes``."""
    if isinstance(spec, torch.Tensor):
        mask = _tensor_mask(spec, count, size)
    elif isinstance(spec, str) and (_SPELLINGS.get(spec, spec) in MASK_SHAPES or not Path(spec).suffix):
        mask = torch.stack([shape_mask(spec, size, seed) for seed in seeds[:count]])
    else:
        mask = read_mask(spec, size)[None].expand(count, -1, -1, -1)
    check_mask(mask)
    return mask.contiguous()


def _tensor_mask(mask: torch.Tensor, count: int, size: int) -> torch.Tensor:
    mask = mask.detach().float().cpu()
    while mask.dim() < 4:
        mask = mask[None]
    if mask.shape[1] != 1 or mask.shape[-2:] != (size, size) or mask.shape[0] not in (1, count):
        raise DdpmkitError(f"a mask of shape {tuple(mask.shape)} for {count} images of {size}x{size}: give (H, W), "
                           f"(1, H, W) or (N, 1, H, W) with H = W = {size}")
    return (mask > 0.5).float().expand(count, -1, -1, -1)


def check_mask(mask: torch.Tensor) -> None:
    """Refuse masks that leave nothing to do: all black (nothing to generate) or all white (nothing known)."""
    per_image = mask.flatten(1).mean(1)
    if bool((per_image == 0).any()):
        raise DdpmkitError("the mask is all black: nothing to generate; paint white where the image should change")
    if bool((per_image == 1).any()):
        raise DdpmkitError("the mask is all white: nothing is known to inpaint around; use `ddpmkit sample` to draw "
                           "whole images, or `ddpmkit edit` to change a whole image")
