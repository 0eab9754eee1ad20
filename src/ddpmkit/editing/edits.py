"""Inpainting and image-to-image on a loaded model: what ``DiffusionSampler.inpaint`` and ``.edit`` run.

Each input image is edited ``completions`` times; result j of image i has seed ``seed + i * completions + j``, which
draws its starting noise and every step's noise (so a result does not depend on the batch it was drawn in). Results
come back image after image, float in [0, 1] on the CPU.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..build import clip_range
from ..data import to_model_range, to_unit_range
from ..errors import DdpmkitError
from ..paths import on_path, path_of
from ..seeded_sampling import seeded_noise
from .masks import masks_for
from .repaint import count_evaluations, edit_sample, repaint_positions

EDIT_SAMPLERS = {"ddpm": 1.0, "ddim": 0.0}  # the editing loop's two samplers, as their default eta


@dataclass(frozen=True)
class InpaintMethod:
    """Defaults of an inpainting method: a run of ``steps`` with RePaint's jumps (jump_n_sample 1: none)."""
    steps: int
    jump_length: int
    jump_n_sample: int


# RePaint's default, the best of seven settings at about 100 network evaluations on the quick model
# (docs/editing.md): 12 steps, and at 5 of them 9 more passes over the last 2 steps: 102 evaluations per image.
# Replacement's default of 100 steps costs about the same.
INPAINT_METHODS = {"replace": InpaintMethod(steps=100, jump_length=1, jump_n_sample=1),
                   "repaint": InpaintMethod(steps=12, jump_length=2, jump_n_sample=10)}
SDEDIT_STEPS = 50      # steps of the whole trajectory; an edit at strength s runs about s * SDEDIT_STEPS of them
SDEDIT_STRENGTH = 0.7  # for class swaps: 80% judged the target class on the quick model (docs/editing.md)


def check_images(sampler, images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or float ones in [0, 1], (N, C, H, W) of the model's shape -> float in [0, 1]; else one line."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise DdpmkitError("images must be a tensor (N, C, H, W), uint8 or float in [0, 1]")
    c, h, w = sampler.image_shape
    if images.shape[1] != c:
        raise DdpmkitError(f"the images have {images.shape[1]} channels but the model draws {c}-channel images; "
                           f"convert them ({'greyscale' if c == 1 else 'RGB'})")
    if tuple(images.shape[2:]) != (h, w):
        raise DdpmkitError(f"the images are {images.shape[3]}x{images.shape[2]} pixels but the model draws {w}x{h}; "
                           f"resize them to {w}x{h}")
    if len(images) == 0:
        raise DdpmkitError("no images to edit")
    unit = to_unit_range(images).float()
    if not bool(torch.isfinite(unit).all()) or float(unit.min()) < 0 or float(unit.max()) > 1:
        raise DdpmkitError("float images must be finite and in [0, 1]")
    return unit


def labels_for(sampler, labels, count: int) -> torch.Tensor | None:
    """One class index per input image (a class for all, or a list) -> (count,) tensor; None stays None."""
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    if isinstance(labels, (str, int)):
        indices = sampler.class_indices(labels)  # one class, or a comma-separated list of them
        indices = indices * count if len(indices) == 1 else indices
    else:
        indices = [sampler.class_indices(c)[0] for c in labels]
    if len(indices) != count:
        raise DdpmkitError(f"{len(indices)} classes for {count} images: give one class, or one per image")
    return torch.tensor(indices)


def _check_eta(eta: float) -> None:
    if not (math.isfinite(eta) and 0 <= eta <= 1):
        raise DdpmkitError(f"eta must be between 0 (DDIM, deterministic) and 1 (DDPM), got {eta}")


def _check_count(value: int, what: str, low: int = 1) -> None:
    if int(value) != value or value < low:
        raise DdpmkitError(f"{what} must be a whole number of at least {low}, got {value}")


def _steps(sampler, steps: int | None, default: int) -> int:
    """The steps asked for, checked, or the default; for a ddpm model at most T (its T timesteps are all a run can
    visit), the default capped there."""
    if steps is None:
        return min(default, sampler.schedule.num_timesteps) if sampler.objective == "ddpm" else default
    _check_count(steps, "steps")
    if sampler.objective == "ddpm":
        sampler.check_steps(steps)
    return steps


def _in_batches(sampler, originals: torch.Tensor, labels: torch.Tensor | None, completions: int, seed: int,
                batch_size: int, edit: Callable) -> torch.Tensor:
    """Run ``edit(x_T, noise, rows, y)`` over every (image, completion) pair in batches; ``rows`` indexes
    ``originals``. Returns float images in [0, 1] on the CPU, image after image."""
    _check_count(completions, "completions")
    _check_count(batch_size, "batch_size")
    rows = torch.arange(len(originals)).repeat_interleave(completions)
    seeds = [seed + k for k in range(len(rows))]
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        x_T, noise = seeded_noise(seeds[start: start + batch_size], sampler.image_shape)
        y = labels[chunk] if labels is not None else None
        out.append(sampler.to_images(edit(x_T.to(sampler.device), noise, chunk, y)))
    return torch.cat(out)


def inpaint_images(sampler, images: torch.Tensor, mask, *, method: str = "repaint", completions: int = 1,
                   seed: int = 0, labels=None, guidance: float = 0.0, steps: int | None = None,
                   jump_length: int | None = None, jump_n_sample: int | None = None, sampler_name: str = "ddpm",
                   eta: float | None = None, clip: bool | None = None, batch_size: int = 64,
                   progress: bool = True) -> torch.Tensor:
    """Fill in where ``mask`` is 1 (see editing.masks.masks_for) so that it fits the rest of each image, which is
    returned unchanged, bit for bit."""
    sampler._refuse_student("inpainting")
    if method not in INPAINT_METHODS:
        raise DdpmkitError(f"unknown inpainting method {method!r}; choose one of {', '.join(INPAINT_METHODS)}")
    defaults = INPAINT_METHODS[method]
    steps = _steps(sampler, steps, defaults.steps)
    jump_length = jump_length or defaults.jump_length
    jump_n_sample = jump_n_sample or defaults.jump_n_sample
    if method == "replace" and (jump_length, jump_n_sample) != (1, 1):
        raise DdpmkitError("jump_length and jump_n_sample are RePaint's resampling; use method repaint for them")
    eta = _eta(sampler_name, eta)
    _check_count(jump_length, "jump_length")
    _check_count(jump_n_sample, "jump_n_sample")
    if jump_n_sample > 1 and jump_length >= steps:
        raise DdpmkitError(f"jump_length {jump_length} must be smaller than steps ({steps}) for RePaint to resample")
    originals = check_images(sampler, images)
    masks = inpaint_masks(sampler, mask, len(originals), seed, completions)
    labels = labels_for(sampler, labels, len(originals))
    path = path_of(sampler.config, sampler.schedule)
    known = to_model_range(originals, sampler.config.data.zero_one)

    def edit(x_T, noise, rows, y):
        m, k = masks[rows].to(sampler.device), known[rows].to(sampler.device)
        return edit_sample(path, sampler.denoiser(y, guidance), path.start(x_T), steps=steps, noise=noise, known=k,
                           mask=m, jump_length=jump_length, jump_n_sample=jump_n_sample, eta=eta,
                           clip_range=_clip(sampler, clip), progress=progress)

    with torch.no_grad():
        results = _in_batches(sampler, originals, labels, completions, seed, batch_size, edit)
    rows = torch.arange(len(originals)).repeat_interleave(completions)
    return torch.where(masks[rows] > 0.5, results, originals[rows])  # the known pixels, exactly as given


def inpaint_masks(sampler, mask, count: int, seed: int = 0, completions: int = 1) -> torch.Tensor:
    """The (count, 1, H, W) masks an inpainting run of ``count`` pictures uses: picture i's (for random-boxes) from
    its first result's seed, seed + i * completions."""
    return masks_for(mask, count, sampler.image_shape[-1], [seed + i * completions for i in range(count)])


def inpaint_evaluations(method: str = "repaint", steps: int | None = None, jump_length: int | None = None,
                        jump_n_sample: int | None = None) -> int:
    """Network evaluations per image of an inpainting run (guidance doubles them)."""
    d = INPAINT_METHODS[method]
    return count_evaluations(repaint_positions(steps or d.steps, jump_length or d.jump_length,
                                               jump_n_sample or d.jump_n_sample))


def sdedit_images(sampler, images: torch.Tensor, strength: float = SDEDIT_STRENGTH, *, labels=None,
                  guidance: float = 0.0, completions: int = 1, seed: int = 0, steps: int | None = None,
                  sampler_name: str = "ddpm", eta: float | None = None, clip: bool | None = None,
                  batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): each image noised to ``strength`` of the way to pure noise, then denoised, towards
    ``labels`` (a class for all, or one per image) with ``guidance`` w for a class swap. Strength 0 returns the
    images; 1 draws new ones that only share the class."""
    sampler._refuse_student("image-to-image")
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0 <= strength <= 1):
        raise DdpmkitError(f"strength must be between 0 (keep the image) and 1 (a new image), got {strength}")
    steps = _steps(sampler, steps, SDEDIT_STEPS)
    eta = _eta(sampler_name, eta)
    originals = check_images(sampler, images)
    labels = labels_for(sampler, labels, len(originals))
    start = sdedit_start(strength, steps)
    if start >= steps:
        return originals.repeat_interleave(completions, 0)
    path = path_of(sampler.config, sampler.schedule)
    x0 = to_model_range(originals, sampler.config.data.zero_one)
    level = tuple(v.float() for v in path.alpha_sigma(start / steps))

    def edit(x_T, noise, rows, y):
        x = on_path(x0[rows].to(sampler.device), x_T, tuple(v.expand(len(rows)).to(sampler.device) for v in level))
        return edit_sample(path, sampler.denoiser(y, guidance), x, steps=steps, noise=noise, start=start, eta=eta,
                           clip_range=_clip(sampler, clip), progress=progress)

    with torch.no_grad():
        return _in_batches(sampler, originals, labels, completions, seed, batch_size, edit)


def sdedit_start(strength: float, steps: int) -> int:
    """The position an SDEdit run of ``steps`` starts from: it runs the last ``steps - start`` steps."""
    return round(steps * (1 - strength))


def inverted_edit_images(sampler, images: torch.Tensor, *, labels=None, source_labels=None, guidance: float = 0.0,
                         steps: int | None = None, refine: int = 0, progress: bool = True) -> torch.Tensor:
    """The faithful route: DDIM inversion of each image (with its ``source_labels``, or the null label) to its
    latent, then the deterministic sampler back from it towards ``labels`` (see DiffusionSampler.invert; with
    ``refine`` fixed-point iterations per step, the same class and w = 0 give the image back to float error)."""
    originals = check_images(sampler, images)
    labels = labels_for(sampler, labels, len(originals))
    source = labels_for(sampler, source_labels, len(originals))
    steps = _steps(sampler, steps, SDEDIT_STEPS)
    latents = sampler.invert(originals, source, steps=steps, refine=refine, progress=progress)
    with torch.no_grad():
        return sampler.decode(latents, labels, steps, progress, guidance=guidance)


def _eta(sampler_name: str, eta: float | None) -> float:
    if sampler_name not in EDIT_SAMPLERS:
        raise DdpmkitError(f"editing runs the ddpm or ddim sampler, not {sampler_name!r}: multistep solvers "
                           f"(dpm++, unipc) and heun reuse earlier steps along one smooth path, which keeping known "
                           f"pixels and jumping back break")
    eta = EDIT_SAMPLERS[sampler_name] if eta is None else float(eta)
    _check_eta(eta)
    return eta


def _clip(sampler, clip: bool | None) -> tuple[float, float] | None:
    return clip_range(sampler.config) if clip is None or clip else None
