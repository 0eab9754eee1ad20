"""One optimizer step's images and random numbers, the same whatever the number of processes.

``train.batch_size`` is the global batch: the images one optimizer step learns from, over all processes and
micro-batches. The hardware only decides how it is split: ``world_size`` processes (torchrun) each run
``train.grad_accum`` micro-batches of ``batch_size / (world_size * grad_accum)`` images. Rank r's micro-batch i holds
the global batch's images ``(r * grad_accum + i) * micro`` onwards, and every random number of the step (flips,
label drops, timesteps, noise) is drawn for the whole global batch from a generator seeded by (seed, step), of which
each micro-batch keeps its slice. So a config trains the same on 1 process or 64, and a checkpoint needs no
generator state: a run resumes on any number of processes, and on another kind of device (whose generator draws
other numbers from the same seed, so the run goes on as a different but equally valid one).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .errors import DdpmkitError


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

    @classmethod
    def draw(cls, generator: torch.Generator, seed: int, step: int, batch_size: int,
             image_shape: tuple[int, int, int], num_timesteps: int, hflip: bool,
             label_dropout: float | None) -> "StepRandomness":
        """Step ``step``'s numbers for the whole global batch; ``label_dropout`` None: an unconditional model."""
        generator.manual_seed(step_seed(seed, step, "batch"))
        device = generator.device
        flips = torch.rand(batch_size, device=device, generator=generator) < 0.5 if hflip else None
        drops = (torch.rand(batch_size, device=device, generator=generator) < label_dropout
                 if label_dropout is not None else None)
        t = torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)
        noise = torch.randn((batch_size, *image_shape), device=device, generator=generator)
        return cls(t, noise, flips, drops)

    def __getitem__(self, part: slice) -> "StepRandomness":
        return StepRandomness(self.t[part], self.noise[part], None if self.flips is None else self.flips[part],
                              None if self.drops is None else self.drops[part])
