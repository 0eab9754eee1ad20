"""Pictures made by sampling: interpolations, denoising strips and denoising animations.

Each function takes a ``DiffusionSampler`` and returns tensors or PIL images; cli.py saves them.
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.utils import make_grid

from .config import DEFAULT_STEPS
from .errors import DdpmkitError
from .sampling import DiffusionSampler
from .viz import to_pil, upscale, labelled_grid

# The samplers the pictures use, per objective: (stochastic, deterministic). A DDPM model shows ancestral DDPM and
# DDIM (eta = 0, DDIM §5.3's interpolation); edm and flow models, which have neither, their default SDE-DPM-Solver++
# and its deterministic twin DPM-Solver++(2M) (samplers/objective_solvers.py).
# A distilled student has one sampler, deterministic, in the steps it was distilled for.
PICTURE_SAMPLERS = {"ddpm": ("ddpm", "ddim"), "edm": ("sde-dpm++2m", "dpm++2m"), "flow": ("sde-dpm++2m", "dpm++2m"),
                    "student": ("distilled",)}
PICTURE_STEPS = DEFAULT_STEPS["ddim"]  # deterministic steps of interpolations and strips (a student: its own)


def deterministic_sampler(sampler: DiffusionSampler) -> str:
    """The model's deterministic sampler for pictures: the image is a smooth function of its starting noise."""
    return PICTURE_SAMPLERS[sampler.family][-1]


def picture_steps(sampler: DiffusionSampler, steps: int | None) -> int | None:
    """``steps``, or the pictures' default: PICTURE_STEPS, or a student's own (None)."""
    return steps if steps is not None or sampler.family == "student" else PICTURE_STEPS


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985), as used for DDIM latents (DDIM §5.3):
    it keeps the norm that Gaussian noise of this size concentrates on, which linear interpolation shrinks."""
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if theta.abs() < 1e-6:
        return (1 - alpha) * a + alpha * b
    return (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)


def _labels(sampler: DiffusionSampler, cls, n: int) -> torch.Tensor | None:
    """``n`` copies of one class's label, or None (unconditional)."""
    if cls is None:
        return None
    indices = sampler.class_indices(cls)
    if len(indices) != 1:
        raise DdpmkitError(f"this picture shows one class at a time, got {len(indices)}: pass a single --class")
    return torch.full((n,), indices[0])


def interpolate_noise(sampler: DiffusionSampler, seed_a: int, seed_b: int, points: int = 8, cls=None,
                      guidance: float = 0.0, steps: int | None = None, progress: bool = True) -> torch.Tensor:
    """Images along the great circle between the starting noises of ``seed_a`` and ``seed_b``, each decoded with
    the model's deterministic sampler (DDIM with eta = 0 for DDPM models), so the path in noise space becomes a
    smooth path in image space."""
    if points < 2:
        raise DdpmkitError("interpolation needs at least 2 points")
    x_a, _ = sampler.noise([seed_a])
    x_b, _ = sampler.noise([seed_b])
    x_T = torch.cat([slerp(x_a, x_b, i / (points - 1)) for i in range(points)])
    x0 = sampler.run(x_T, labels=_labels(sampler, cls, points), guidance=guidance,
                     sampler=deterministic_sampler(sampler), steps=picture_steps(sampler, steps), progress=progress)
    return sampler.to_images(x0)


def interpolate_classes(sampler: DiffusionSampler, cls_a, cls_b, points: int = 8, seed: int = 0,
                        guidance: float = 0.0, steps: int | None = None,
                        progress: bool = True) -> torch.Tensor:
    """Images from one fixed noise with the label embedding moved linearly from class a to class b, decoded with
    the model's deterministic sampler."""
    if points < 2:
        raise DdpmkitError("interpolation needs at least 2 points")
    a, b = sampler.class_indices(cls_a)[0], sampler.class_indices(cls_b)[0]
    k = sampler.model.spec.num_classes + 1
    alphas = torch.linspace(0, 1, points)[:, None]
    weights = (1 - alphas) * torch.nn.functional.one_hot(torch.tensor(a), k) + \
        alphas * torch.nn.functional.one_hot(torch.tensor(b), k)
    x_T, _ = sampler.noise([seed])
    x0 = sampler.run(x_T.expand(points, -1, -1, -1), labels=weights.float(), guidance=guidance,
                     sampler=deterministic_sampler(sampler), steps=picture_steps(sampler, steps),
                     progress=progress)
    return sampler.to_images(x0)


def record_denoising(sampler: DiffusionSampler, sampler_name: str, steps: int | None, frames: int,
                     seeds: list[int], labels: torch.Tensor | None, guidance: float, progress: bool,
                     **options) -> tuple[list, list]:
    """Run a sampler and return x_t and the predicted x_0 at ``frames`` evenly spaced points of the run.

    The run has n + 1 states: the inputs x_t of its n steps and the final sample. Frame i shows state
    round(i * n / (frames - 1)): the first is pure noise, the last the sample (whose "predicted x_0" is itself).
    With more frames than states, states repeat, so the count and spacing always hold. Only those states are
    kept (n is counted first, see DiffusionSampler.count_steps), so memory does not grow with the number of steps.
    """
    guidance_rescale = options.pop("guidance_rescale", 0.0)
    n = sampler.count_steps(sampler_name, steps, **options)
    positions = [round(i * n / (frames - 1)) for i in range(frames)]
    wanted = set(positions)
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    seen = 0

    def on_step(t, x, x0):
        nonlocal seen
        if seen in wanted:
            kept[seen] = sampler.to_images(x), sampler.to_images(x0)
        seen += 1

    x_T, noise = sampler.noise(seeds)
    final = sampler.run(x_T, noise, labels=labels, guidance=guidance, sampler=sampler_name, steps=steps,
                        guidance_rescale=guidance_rescale, on_step=on_step, progress=progress, **options)
    if seen != n:  # a sampler whose dry run differs from its real one: a bug in count_steps or the sampler
        raise RuntimeError(f"{sampler_name} took {seen} steps, but count_steps said {n}")
    kept[n] = (sampler.to_images(final),) * 2
    return [kept[k][0] for k in positions], [kept[k][1] for k in positions]


def denoising_strip(sampler: DiffusionSampler, frames: int = 10, cls=None, seed: int = 0, guidance: float = 0.0,
                    stochastic_steps: int | None = None, deterministic_steps: int | None = None,
                    progress: bool = True) -> Image.Image:
    """Four rows for one starting noise: x_t and the predicted x_0 at ``frames`` evenly spaced steps from the noise
    to the sample, for the model's stochastic and deterministic samplers (PICTURE_SAMPLERS: DDPM, all T steps by
    default, and DDIM for a DDPM model; a distilled student's one sampler, two rows). The last column is the final
    sample."""
    if frames < 2:
        raise DdpmkitError("a strip needs at least 2 frames")
    rows, labels = [], []
    samplers = PICTURE_SAMPLERS[sampler.family]
    for name, steps in zip(samplers, (stochastic_steps, picture_steps(sampler, deterministic_steps))[-len(samplers):]):
        xs, x0s = record_denoising(sampler, name, steps, frames, [seed], _labels(sampler, cls, 1), guidance,
                                   progress)
        rows += [torch.cat(xs), torch.cat(x0s)]
        labels += [f"{name.upper()} x_t", f"{name.upper()} pred. x_0"]
    # The two take different numbers of steps; the column labels give the fraction of each run completed.
    columns = [f"{round(100 * i / (frames - 1))}%" for i in range(frames)]
    return labelled_grid(torch.cat(rows), nrow=frames, row_labels=labels, col_labels=columns)


def denoising_frames(sampler: DiffusionSampler, seeds: list[int], cls=None, frames: int = 40,
                     sampler_name: str | None = None,
                     steps: int | None = None, guidance: float = 0.0, show: str = "x_t",
                     progress: bool = True, **options) -> list[Image.Image]:
    """Frames of a grid of images (one per seed) being denoised: x_t (or the predicted x_0) from noise to sample;
    ``options`` (spacing, threshold, guidance_rescale) go to ``DiffusionSampler.run``."""
    if frames < 2:
        raise DdpmkitError("an animation needs at least 2 frames")
    if not seeds:
        raise DdpmkitError("an animation needs at least one image (--per-class >= 1)")
    xs, x0s = record_denoising(sampler, sampler_name, steps, frames, seeds, _labels(sampler, cls, len(seeds)),
                               guidance, progress, **options)
    nrow = len(seeds)
    return [upscale(to_pil(make_grid(f, nrow=nrow, padding=2, pad_value=1.0)), 1, 64)
            for f in (xs if show == "x_t" else x0s)]
