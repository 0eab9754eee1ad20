"""The held-out images a run evaluates its EMA model on (for ``best.pt``), and the loss it measures on them.

Where the dataset has a test split, its first ``train.eval_images`` are used and training keeps every training
image. Where it has none (an image folder, a training-only IDX folder), ``eval_images`` training images are held out
(``data.hold_out``: seeded, every class in proportion) and removed from training. That choice changes the training
set, so it is made once, when the run starts, and kept in the checkpoint: changing ``train.eval_every`` on resume
never moves images between training and evaluation (doing so would evaluate on trained-on images, or add images to
training and reshuffle the batch order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import distributed
from .build import autocast
from .config import Config
from .data import ImageData, hold_out, load_images, load_into_memory, subset, to_model_range
from .errors import DdpmkitError
from .losses import training_loss


@dataclass
class HeldOut:
    images: torch.Tensor
    labels: torch.Tensor | None
    source: str  # "test split" or "held out of train"


@dataclass
class RunSplit:
    """The images a run trains on, and those it evaluates on (None: no held-out evaluation in this run)."""
    train: ImageData
    heldout: HeldOut | None
    holds_out: bool  # were training images held out when the run started? Fixed for the life of the run
    note: str | None = None  # why the held-out evaluation asked for cannot run, to tell the user


def split_for_run(cfg: Config, data: ImageData, checkpoint: dict | None = None) -> RunSplit:
    """The split of a new run (``checkpoint`` None: held out when ``eval_every`` > 0 and there is no test split), or
    of the run ``checkpoint`` is from: the decision it made when it started, whatever ``eval_every`` is now."""
    n, wanted = cfg.train.eval_images, cfg.train.eval_every > 0
    holds_out = None if checkpoint is None else checkpoint.get("holds_out")
    # Checkpoints from before the decision was kept: the rule applied to the config saved inside.
    started_with_eval = wanted if checkpoint is None else int(checkpoint["config"]["train"].get("eval_every", 0)) > 0
    needs_test = wanted and not holds_out or holds_out is None and started_with_eval
    test = _test_split(cfg, n) if needs_test else None
    if holds_out is None:
        holds_out = started_with_eval and test is None
    if holds_out:
        if len(data) <= n:
            raise DdpmkitError(f"no test split, and {len(data)} training images are too few to hold out "
                               f"train.eval_images={n}; lower it, or --set train.eval_every=0 to turn the held-out "
                               f"evaluation off")
        heldout, rest = hold_out(data, n, cfg.data.num_workers)
        return RunSplit(rest, HeldOut(heldout.images, heldout.labels, "held out of train") if wanted else None, True)
    if wanted and test is not None:
        return RunSplit(data, HeldOut(test.images, test.labels, "test split"), False)
    note = (f"train.eval_every={cfg.train.eval_every}: no held-out evaluation in this run. Its data has no test split "
            f"and it started without held-out images (eval_every=0), so holding {n} out now would change its "
            f"training set; start a new run (--run-dir) to evaluate") if wanted else None
    return RunSplit(data, None, False, note)


def _test_split(cfg: Config, n: int) -> ImageData | None:
    """The test split's first ``n`` images in memory (decoded now if the split is read on the fly, as CelebA's), or
    None when the dataset has no test split."""
    try:
        test = load_images(cfg.data, "test")
    except (DdpmkitError, RuntimeError, OSError):
        return None
    if not len(test):
        return None
    return load_into_memory(subset(test, torch.arange(min(n, len(test)))), cfg.data.num_workers)


@torch.no_grad()
def heldout_loss(model, schedule, images: torch.Tensor, labels, cfg: Config, device: torch.device) -> float:
    """Loss on fixed images at fixed timesteps (evenly spread over 0..T-1; for EDM and flow, levels at evenly spread
    quantiles of their training distributions) and fixed noise: comparable across steps.
    Its batches of 256 are shared out over the processes of a distributed run."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(12345))
    starts = range(0, len(images), 256)
    loss_of = training_loss(cfg.diffusion)
    total = 0.0
    for k in distributed.my_share(len(starts)):
        start = starts[k]
        x0 = to_model_range(images[start: start + 256], cfg.data.zero_one).to(device)
        n = len(x0)
        t = (torch.arange(start, start + n) * schedule.num_timesteps // len(images)).to(device)
        u = ((torch.arange(start, start + n) + 0.5) / len(images)).to(device)  # continuous objectives' levels
        y = labels[start: start + n].to(device) if labels is not None and model.spec.num_classes else None
        with autocast(device, cfg.train.precision):
            loss = loss_of(model, schedule, x0, t, u, noise[start: start + n].to(device), y)
        total += float(loss) * n
    return distributed.sum_over_ranks([total])[0] / len(images)
