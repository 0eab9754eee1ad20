"""Classifier-free guidance (Ho & Salimans 2022) and class selection by index or name."""
from __future__ import annotations

import operator

import torch

from .errors import DdpmkitError
from .samplers import Denoiser


def guided_denoiser(model, labels: torch.Tensor, guidance: float | torch.Tensor, null_label: int,
                    rescale: float = 0.0) -> Denoiser:
    """A denoiser for ``labels`` with guidance weight w = ``guidance``:

        eps = (1 + w) eps(x_t, y) - w eps(x_t, null)          (Ho & Salimans 2022, eq. 6)

    w = 0 is the plain conditional model. Libraries that write eps_null + s (eps_y - eps_null), such as diffusers'
    ``guidance_scale``, use s = 1 + w. The conditional and unconditional predictions come from one batched forward
    pass. ``labels`` are class indices (B,) or mixture weights over the classes and the null label (B, K + 1); the
    formula is applied to the raw output, which for x_0 and v networks is equivalent because both are affine in eps.
    ``rescale`` phi > 0 rescales the guided output towards the conditional one's standard deviation (see
    ``rescale_guidance``). ``guidance`` may also be one w per image, a (B,) tensor (distillation's teacher).
    """
    if not torch.is_tensor(guidance) and guidance == 0:
        return lambda x, t: model(x, t, labels)
    null = torch.full((labels.shape[0],), null_label, device=labels.device, dtype=torch.long)
    if labels.is_floating_point():
        null = torch.nn.functional.one_hot(null, labels.shape[1]).to(labels.dtype)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        w = guidance.reshape(-1, *([1] * (cond.dim() - 1))).to(cond.dtype) if torch.is_tensor(guidance) else guidance
        guided = cond + w * (cond - uncond)
        return rescale_guidance(guided, cond, rescale) if rescale else guided

    return denoise


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, eq. 15-16): the guided prediction scaled to the conditional one's standard
    deviation (per image), mixed in with weight phi. Strong guidance inflates the prediction's scale, which
    over-exposes images; this undoes the inflation while keeping the guided direction (diffusers' ``guidance_rescale``
    does the same on the network output)."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def drop_labels(labels: torch.Tensor, drops: torch.Tensor, null_label: int) -> torch.Tensor:
    """The null label where ``drops`` (bool, drawn with probability p_uncond = diffusion.label_dropout) is set, so
    that one network learns both the conditional and the unconditional model (Ho & Salimans 2022, Algorithm 1)."""
    return torch.where(drops, torch.full_like(labels, null_label), labels)


def parse_classes(spec: str | int | list, class_names: list[str]) -> list[int]:
    """'all', one class or a comma-separated list, each by index or by name (case-insensitive) -> indices."""
    if not class_names:
        raise DdpmkitError("this model is unconditional: it was trained without labels, so it takes no --class; "
                           "train with --set model.class_conditional=true on a labelled dataset")
    if isinstance(spec, int) or hasattr(spec, "__index__"):  # ints, numpy and tensor integers
        items = [operator.index(spec)]
    elif isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(range(len(class_names)))
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [operator.index(item) if hasattr(item, "__index__") else item for item in spec]
    lower = {name.lower(): i for i, name in enumerate(class_names)}
    indices = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and item.lower() not in lower):
            index = int(item)
            if not 0 <= index < len(class_names):
                raise DdpmkitError(f"class {index} is out of range: this model knows classes 0..{len(class_names) - 1}")
        elif item.lower() in lower:
            index = lower[item.lower()]
        else:
            raise DdpmkitError(f"unknown class {item!r}; this model knows: {', '.join(class_names)} (or 0.."
                               f"{len(class_names) - 1}, or all)")
        indices.append(index)
    if not indices:
        raise DdpmkitError("--class needs at least one class, e.g. --class 3, --class Trouser or --class all")
    return indices
