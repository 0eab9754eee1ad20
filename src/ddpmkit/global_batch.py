"""One optimizer step's images and random numbers, the same whatever the number of processes.

``train.batch_size`` is the global batch: the images one optimizer step learns from, over all processes and
micro-batches. The hardware only decides how it is split: ``world_size`` processes (torchrun) each run
``train.grad_accum`` micro-batches of ``batch_size / (world_size * grad_accum)`` images. Rank r's micro-batch i holds
the global batch's images ``(r * grad_accum + i) * micro`` onwards.

Every random number of a step (flips, label drops, timesteps, noise) belongs to one image of the global batch. The
global batch is cut into blocks of ``BLOCK_IMAGES`` images (a constant, whatever the batch size and its split), and
each block's numbers are drawn from a generator seeded by (seed, step, block). A micro-batch draws only the blocks
its images lie in and keeps its own images' numbers: a process holds the numbers of its micro-batch and at most two
blocks, not of the global batch, and draws a few times per block, not per image. So a config trains the same on 1
process or 64, and a checkpoint needs no generator state: a run resumes on any number of processes, and on another
kind of device (whose generator draws other numbers from the same seed, so the run goes on as a different but
equally valid one).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import torch

from .errors import DdpmkitError

# Images per block of random numbers (see above). Larger blocks mean fewer draws for a large micro-batch; smaller ones
# less drawn and thrown away for a small one. Changing it changes every run's random numbers.
BLOCK_IMAGES = 32


@dataclass(frozen=True)
class BatchSplit:
    batch_size: int  # the global batch
    world_size: int  # processes
    grad_accum: int  # micro-batches per process and step

    def __post_init__(self):
        parts = self.world_size * self.grad_accum
        if self.batch_size % parts:
            fits = [a for a in range(1, self.batch_size + 1) if self.batch_size % (self.world_size * a) == 0]
            hint = (f"set train.grad_accum to one of {', '.join(map(str, fits[:6]))}" if fits else
                    f"make train.batch_size a multiple of {self.world_size}")
            raise DdpmkitError(f"train.batch_size={self.batch_size} (the global batch) does not split into "
                               f"{self.world_size} process(es) x {self.grad_accum} micro-batch(es) "
                               f"(train.grad_accum) of equal size; {hint}")

    @property
    def micro_batch(self) -> int:
        """Images in each forward and backward pass of each process."""
        return self.batch_size // (self.world_size * self.grad_accum)

    def part(self, rank: int, micro: int) -> slice:
        """Where rank ``rank``'s micro-batch ``micro`` lies in the global batch."""
        start = (rank * self.grad_accum + micro) * self.micro_batch
        return slice(start, start + self.micro_batch)


def step_seed(seed: int, step: int, stream: str) -> int:
    """A 64-bit seed for one step's random numbers of one kind (``stream``), from the run's seed: unrelated numbers
    for unrelated (seed, step, stream), and the same ones on every process."""
    digest = hashlib.blake2b(f"{seed}/{step}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63: any generator takes it


@dataclass
class StepRandomness:
    """The random numbers of one training step for a batch of images."""
    t: torch.Tensor                  # timesteps (B,)
    noise: torch.Tensor              # eps (B, C, H, W)
    flips: torch.Tensor | None       # horizontal flips (B,) bool, with data.hflip
    drops: torch.Tensor | None       # labels replaced by the null label (B,) bool, for conditional models
    u: torch.Tensor                  # uniform in (0, 1) (B,): the noise level of a continuous objective (EDM, flow)

    @classmethod
    def draw(cls, generator: torch.Generator, seed: int, step: int, images: slice,
             image_shape: tuple[int, int, int], num_timesteps: int, hflip: bool,
             label_dropout: float | None) -> "StepRandomness":
        """Step ``step``'s numbers for the global batch's images ``images`` (a ``BatchSplit.part``), drawn block by
        block on ``generator``'s device; ``label_dropout`` None: an unconditional model."""
        parts = []
        for block in range(images.start // BLOCK_IMAGES, (images.stop - 1) // BLOCK_IMAGES + 1):
            first = block * BLOCK_IMAGES
            drawn = cls._draw_block(generator, step_seed(seed, step, f"batch/{block}"), image_shape, num_timesteps,
                                    hflip, label_dropout)
            parts.append(drawn[max(images.start - first, 0): images.stop - first])
        kinds = zip(*(_values(part) for part in parts))  # t, noise, flips, drops: each a list over the blocks
        return cls(*(None if blocks[0] is None else torch.cat(blocks) for blocks in kinds))

    @classmethod
    def _draw_block(cls, generator: torch.Generator, seed: int, image_shape: tuple[int, int, int],
                    num_timesteps: int, hflip: bool, label_dropout: float | None) -> "StepRandomness":
        """The numbers of one block of ``BLOCK_IMAGES`` images, from a generator seeded by ``seed``."""
        generator.manual_seed(seed)
        n, device = BLOCK_IMAGES, generator.device
        flips = torch.rand(n, device=device, generator=generator) < 0.5 if hflip else None
        drops = (torch.rand(n, device=device, generator=generator) < label_dropout
                 if label_dropout is not None else None)
        t = torch.randint(0, num_timesteps, (n,), device=device, generator=generator)
        noise = torch.randn((n, *image_shape), device=device, generator=generator)
        # Drawn last, so that DDPM's numbers above are what they were before continuous objectives came.
        u = torch.rand(n, device=device, generator=generator).clamp(1e-6, 1 - 1e-6)
        return cls(t, noise, flips, drops, u)

    def __getitem__(self, part: slice) -> "StepRandomness":
        return StepRandomness(*(None if value is None else value[part] for value in _values(self)))


def _values(drawn: StepRandomness) -> list[torch.Tensor | None]:
    return [getattr(drawn, field.name) for field in fields(drawn)]
