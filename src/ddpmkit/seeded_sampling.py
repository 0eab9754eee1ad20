"""Seeded, batched sampling: images for explicit per-image seeds (and class labels), drawn in batches and shared out
over the processes of a distributed run.

``DiffusionSampler.generate`` and the training loop's grids and FD (``train.sample_images``) both draw through
``generate_images``, so an image depends only on its seed and label: never on the batch size, the number of
processes or which of the two drew it. Where a caller spreads images over the classes, ``class_blocks`` is the layout.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from . import distributed
from .errors import DdpmkitError
from .samplers import ImageNoise

# One batch: (x_T, the per-image noise that goes on to draw each image's step noise, labels or None) -> float images
# in [0, 1] on the CPU.
DrawBatch = Callable[[torch.Tensor, ImageNoise, torch.Tensor | None], torch.Tensor]


def class_blocks(num_images: int, num_classes: int) -> list[int]:
    """The classes of ``num_images`` images spread evenly over ``num_classes``: class after class, image i of class
    i * K // N, so N / K of each when K divides N (evaluate's layout) and blocks differing by at most one otherwise."""
    return [i * num_classes // num_images for i in range(num_images)]


def seeded_noise(seeds: Sequence[int], image_shape: Sequence[int]) -> tuple[torch.Tensor, ImageNoise]:
    """x_T for the given per-image seeds (on the CPU), and the generators that go on to draw each image's step noise."""
    noise = ImageNoise.from_seeds(seeds)
    return noise.randn((len(seeds), *image_shape)), noise


def generate_images(draw: DrawBatch, image_shape: Sequence[int], seeds: Sequence[int],
                    labels: Sequence[int] | None = None, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Images for ``seeds`` (and ``labels``, one class index per image) drawn by ``draw`` in batches of ``batch_size``;
    float in [0, 1] on the CPU.

    Launched by torchrun, the processes share the batches out (each one exactly as a single process draws it) and
    every process returns all the images, in order: the same tensor a single process gives."""
    if batch_size < 1:
        raise DdpmkitError("batch_size must be at least 1")
    if not seeds:
        raise DdpmkitError("nothing to sample: ask for at least one image")
    if labels is not None and len(labels) != len(seeds):
        raise DdpmkitError(f"{len(labels)} labels for {len(seeds)} images")
    batches = range(0, len(seeds), batch_size)
    share = distributed.my_share(len(batches))  # every batch, or, under torchrun, every world_size-th
    chunks = []
    # Over several batches, one bar for all images gives the remaining time of the whole job (rank 0's share).
    overall = tqdm(total=sum(len(seeds[batches[k]: batches[k] + batch_size]) for k in share), desc="images",
                   unit="img", disable=not (progress and distributed.is_main()) or len(share) < 2)
    for k in share:
        start = batches[k]
        x_T, noise = seeded_noise(seeds[start: start + batch_size], image_shape)
        y = torch.as_tensor(list(labels[start: start + batch_size])) if labels is not None else None
        chunks.append(draw(x_T, noise, y))
        overall.update(len(x_T))
    overall.close()
    return torch.cat(distributed.gather_in_order(chunks, len(batches)))
