"""Training objectives with a continuous noise level, beside DDPM's discrete forward process (``schedule.py`` and
``losses.py``): EDM's preconditioned denoiser (Karras et al. 2022) and rectified flow (Liu et al. 2022; Esser et al.
2024). Each is a small frozen dataclass holding its paper's constants, with its forward process, its training noise
levels (drawn from uniform numbers, so the training loop's per-image random numbers serve every objective), its loss
and the noise levels it is sampled at. The network is ddpmkit's U-Net unchanged: it sees its input and a noise-level
number (``network(x, level, y)``), the level scaled to the range of DDPM's timesteps, 0..1000, that its sinusoidal
embedding is made for. The samplers are in ``samplers/continuous.py``."""
from .edm import EDM
from .flow import RectifiedFlow

CONTINUOUS_OBJECTIVES = {"edm": EDM, "flow": RectifiedFlow}


def objective_of(diffusion) -> EDM | RectifiedFlow | None:
    """The continuous objective a ``DiffusionConfig`` names (with its papers' constants), or None for ddpm."""
    make = CONTINUOUS_OBJECTIVES.get(diffusion.objective)
    return make() if make else None


__all__ = ["CONTINUOUS_OBJECTIVES", "EDM", "RectifiedFlow", "objective_of"]
