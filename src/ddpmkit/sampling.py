"""Sampling from a trained checkpoint: the ``DiffusionSampler`` object."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from . import distributed
from .build import (CompiledDenoiser, autocast, inference_precision, noise_schedule, run_sampler, sampler_options,
                    sampling_compile_mode, set_tf32, unet_from_dict)
from .checkpoint import load_weights
from .config import DEFAULT_STEPS, config_from_dict, resolve_sampler, sampler_family, samplers_of
from .data import from_model_range, to_model_range
from .editing.edits import SDEDIT_STRENGTH, inpaint_images, inverted_edit_images, sdedit_images
from .errors import DdpmkitError
from .formats import LoadedModel, read_diffusers, read_model
from .guidance import guided_denoiser, parse_classes
from .objectives import objective_of
from .samplers import SAMPLERS, UNIPC_VARIANTS, Denoiser, ImageNoise, StepCallback, invert_ddim
from .samplers.continuous import LEVEL_OPTIONS, invert_objective, with_levels
from .seeded_sampling import generate_images, seeded_noise


def _ddpm_only_options(eta: float, spacing: str | None, threshold: float | None) -> list[str]:
    """The names of the DDPM samplers' options that were given (edm, flow and student models take none of them)."""
    return [name for name, value in (("eta", eta), ("spacing", spacing), ("threshold", threshold)) if value]


class DiffusionSampler:
    """A trained model ready to draw images.

    >>> sampler = DiffusionSampler("runs/quick/final.pt")
    >>> images = sampler.sample_ddim(num_samples=16, steps=50)   # float (16, C, H, W) in [0, 1]

    Image i of a call with ``seed=s`` starts from noise seeded by s + i, so it is the same whatever the batch size.
    ``precision="auto"`` runs the network under bf16 autocast where the device supports it natively (CUDA) and in
    fp32 elsewhere; the sampler's own arithmetic stays in fp32. ``compile="auto"`` runs the network through
    torch.compile (on a GPU as CUDA graphs, mode reduce-overhead): worth it for long jobs, as each new batch shape
    costs a compilation first (seconds on a GPU, about a minute on a CPU). The checkpoint's ``train.tf32`` decides
    whether fp32 work on a GPU uses TensorFloat-32.
    """

    def __init__(self, checkpoint: str | Path | dict | LoadedModel, device: str = "auto", use_ema: bool = True,
                 precision: str = "auto", compile: str | bool | None = None):
        """``checkpoint``: a .pt file or run directory, a .safetensors file of ``ddpmkit export``, a diffusers
        folder or Hugging Face Hub id (see formats.read_model), or a checkpoint dict."""
        if isinstance(checkpoint, dict):
            loaded = LoadedModel(checkpoint, None, "the checkpoint")
        else:
            loaded = checkpoint if isinstance(checkpoint, LoadedModel) else read_model(checkpoint)
        state = loaded.state
        source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {loaded.name}"
        self.weights_file = loaded.file  # the file the weights came from (None for a dict)
        self.device = distributed.setup(device)  # under torchrun: this process's device, the process group joined
        self.precision = inference_precision(self.device, precision)
        self.config = config_from_dict(state["config"], source=f"the config inside {source}")
        self.model = unet_from_dict(state["unet"], source)
        load_weights(self.model, state["ema"]["model"] if use_ema else state["model"], source)
        self.model.to(self.device).eval().requires_grad_(False)
        self.memory_format = torch.channels_last if self.config.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)  # as in training: faster convolutions
        set_tf32(self.device, self.config.train.tf32)
        mode = sampling_compile_mode(self.device, compile)
        self.network = CompiledDenoiser(self.model, mode) if mode else self.model  # what the samplers call
        self.schedule = noise_schedule(self.config.diffusion).to(self.device)
        self.objective = self.config.diffusion.objective  # ddpm, edm or flow
        self.family = sampler_family(self.config)  # its objective, or "student" for a distilled student
        self.class_names: list[str] = list(state.get("class_names", []))
        self.step = int(state["step"])

    @classmethod
    def from_diffusers(cls, path_or_repo_id: str | Path, **kwargs) -> "DiffusionSampler":
        """A diffusers DDPM (a DDPMPipeline folder, a UNet2DModel with its scheduler, or a Hub id such as
        ``google/ddpm-cifar10-32``, read from the Hugging Face cache or downloaded) with ddpmkit's samplers.
        Keywords are ``__init__``'s. Which configurations convert, and which are refused: docs/interop.md."""
        return cls(read_diffusers(path_or_repo_id), **kwargs)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        spec = self.model.spec
        return spec.image_channels, spec.image_size, spec.image_size

    @property
    def recorded_with_samples(self) -> dict:
        """What files of samples record of this model (viz.write_npz), so that evaluate can check its judge."""
        return {"class_names": self.class_names, "resize_mode": self.config.data.resize_mode}

    @property
    def is_conditional(self) -> bool:
        return self.model.spec.num_classes > 0

    def class_indices(self, spec: str | int | Sequence) -> list[int]:
        """'all', a class, or a list of classes, by index or name -> class indices (see guidance.parse_classes)."""
        return parse_classes(spec, self.class_names if self.is_conditional else [])

    def denoiser(self, labels: torch.Tensor | None = None, guidance: float = 0.0,
                 guidance_rescale: float = 0.0) -> Denoiser:
        """The network as a sampler sees it: unconditional (null label) when ``labels`` is None, else guided
        (``guidance_rescale`` phi: Lin et al. 2024's rescale of the guided output, see guidance.rescale_guidance)."""
        if labels is None:
            if guidance:
                raise DdpmkitError("guidance needs classes to guide towards: add --class (or labels=...)")
            network: Denoiser = lambda x, t: self.network(x, t)  # noqa: E731
        elif not self.is_conditional:
            raise DdpmkitError("this model is unconditional (trained without labels): it takes no classes or "
                               "guidance; train with --set model.class_conditional=true")
        elif self.model.spec.guidance_input:
            network = self._guidance_as_input(labels.to(self.device), guidance, guidance_rescale)
        else:
            network = guided_denoiser(self.network, labels.to(self.device), guidance, self.model.spec.num_classes,
                                      rescale=guidance_rescale)
        if self.precision == "fp32":
            return network

        def reduced_precision(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.precision):
                return network(x, t)
        return reduced_precision

    def _guidance_as_input(self, labels: torch.Tensor, guidance: float, guidance_rescale: float) -> Denoiser:
        """A guidance-distilled student: w is the network's input, one evaluation per step instead of two."""
        top = self.config.distill.max_guidance
        if not 0 <= guidance <= top:
            raise DdpmkitError(f"guidance {guidance:g}: this student learned its teacher's guidance for w in [0, "
                               f"{top:g}]; choose one there, or sample its teacher ({self.config.distill.teacher})")
        if guidance_rescale:
            raise DdpmkitError("guidance_rescale: this student takes w as input and has no separate conditional "
                               "prediction to rescale towards; leave it at 0")
        w = torch.full((len(labels),), float(guidance), device=self.device)
        return lambda x, t: self.network(x, t, labels, guidance=w)

    def run(self, x_T: torch.Tensor, noise: ImageNoise | None = None, labels: torch.Tensor | None = None,
            guidance: float = 0.0, sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
            clip: bool | None = None, spacing: str | None = None, threshold: float | None = None,
            guidance_rescale: float = 0.0, on_step: StepCallback | None = None,
            progress: bool = True, **sampler_kwargs) -> torch.Tensor:
        """One batch through ``sampler`` from a given x_T; returns x_0 in the model's range, on the device.

        spacing: which timesteps fewer than T steps visit (samplers.SPACINGS; default trailing, from t = T - 1);
        threshold: dynamic thresholding of x_0 at this quantile (e.g. 0.995) instead of clipping;
        guidance_rescale: phi of Lin et al.'s guidance rescale (0 = off); other keywords (e.g. heun's ``churn``)
        go to the sampler function. ``sampler`` None: the default of the model's objective (config.default_sampler);
        edm and flow models take euler or heun, without spacing, thresholding, eta or on_step."""
        if not math.isfinite(guidance):  # NaN would turn every image into NaN without a word
            raise DdpmkitError(f"guidance must be a finite number, got {guidance}")
        if not (math.isfinite(guidance_rescale) and 0 <= guidance_rescale <= 1):
            raise DdpmkitError(f"guidance_rescale must be between 0 and 1, got {guidance_rescale}")
        sampler = resolve_sampler(self.family, sampler)
        options = self._options(sampler, steps, eta, clip, spacing, threshold)
        self._check_level_options(sampler_kwargs)
        x_T = x_T.to(self.device).contiguous(memory_format=self.memory_format)
        return run_sampler(self.config, sampler, self.denoiser(labels, guidance, guidance_rescale), self.schedule, x_T,
                           steps=steps, noise=noise, progress=progress, ddpm_options=options, on_step=on_step,
                           **sampler_kwargs)

    def _options(self, sampler: str, steps: int | None, eta: float, clip: bool | None, spacing: str | None,
                 threshold: float | None) -> dict | None:
        """A ddpm model's sampler options (``sampler_options``); for an edm or flow model None, after refusing in one
        line what their samplers do not take."""
        if self.family == "student":
            return self._student_options(sampler, steps, eta, spacing, threshold)
        if self.objective == "ddpm":
            return self._sampler_options(sampler, steps, eta, clip, spacing, threshold)
        if sampler not in samplers_of(self.objective):
            raise DdpmkitError(f"{sampler!r} is not a sampler of {self.objective} models; choose one of "
                               f"{', '.join(samplers_of(self.objective))}")
        if steps is not None and steps < 1:
            raise DdpmkitError(f"steps must be at least 1, got {steps}")
        unsupported = _ddpm_only_options(eta, spacing, threshold)
        if unsupported:
            raise DdpmkitError(f"{', '.join(unsupported)}: options of ddpm models' samplers; {self.objective} models "
                               f"sample at their own noise levels (move them with {LEVEL_OPTIONS[self.objective]})")
        return None

    def _student_options(self, sampler: str, steps: int | None, eta: float, spacing: str | None,
                         threshold: float | None) -> None:
        """Refuse in one line what a distilled student cannot do: other samplers, other steps, other options."""
        d = self.config.distill
        what = f"this model is a {d.student_steps}-step student ({d.method} distillation)"
        if sampler not in samplers_of("student"):
            raise DdpmkitError(f"{what}: it samples with its own sampler, --sampler {samplers_of('student')[0]}, "
                               f"not {sampler}; its teacher ({d.teacher}) takes the others")
        if steps is not None and d.method == "progressive" and steps != d.student_steps:
            raise DdpmkitError(f"{what}: it was trained for exactly {d.student_steps} steps, not {steps}; leave "
                               f"--steps out, or sample its teacher ({d.teacher}) for more")
        if steps is not None and steps < 1:  # a consistency student takes any number of steps
            raise DdpmkitError(f"steps must be at least 1, got {steps}")
        unsupported = _ddpm_only_options(eta, spacing, threshold)
        if unsupported:
            raise DdpmkitError(f"{', '.join(unsupported)}: {what}, which steps over the levels it was distilled at")

    def _check_level_options(self, options: dict) -> None:
        """Refuse in one line an edm model's shift, a flow model's rho, either for a ddpm model or a student, or a
        value <= 0."""
        given = [name for name in ("rho", "shift") if options.get(name) is not None]
        if given and self.family == "student":
            raise DdpmkitError(f"{', '.join(given)}: a distilled student samples at the levels it was distilled at")
        if given and self.objective == "ddpm":
            raise DdpmkitError(f"{', '.join(given)}: options of edm (rho) and flow (shift) models; a ddpm model's "
                               f"timesteps are set with spacing")
        try:
            with_levels(self.objective, objective_of(self.config.diffusion), **{k: options[k] for k in given})
        except ValueError as error:
            raise DdpmkitError(str(error)) from None

    def count_steps(self, sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
                    clip: bool | None = None, spacing: str | None = None, threshold: float | None = None,
                    **sampler_kwargs) -> int:
        """How many times ``run`` with these options calls ``on_step`` (once per network evaluation; heun's levels
        cost two). Found by running the sampler itself on a one-pixel image with a stand-in network that predicts
        zeros: milliseconds, and right for every sampler and option without a formula for each."""
        sampler = resolve_sampler(self.family, sampler)
        options = self._options(sampler, steps, eta, clip, spacing, threshold)
        calls = 0

        def count(t, x, x0):
            nonlocal calls
            calls += 1

        pixel = torch.zeros(1, 1, 1, 1, device=self.device)
        run_sampler(self.config, sampler, lambda x, t: torch.zeros_like(x), self.schedule, pixel, steps=steps,
                    noise=ImageNoise.from_seeds([0]), progress=False, ddpm_options=options, on_step=count,
                    **sampler_kwargs)
        return calls

    def _sampler_options(self, sampler: str, steps: int | None, eta: float, clip: bool | None, spacing: str | None,
                         threshold: float | None) -> dict:
        if sampler not in SAMPLERS:
            raise DdpmkitError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.check_steps(steps)
        if not (math.isfinite(eta) and eta >= 0):
            raise DdpmkitError(f"eta must be a finite number >= 0, got {eta}")
        return sampler_options(self.config, sampler, steps, eta, clip is None or clip, spacing, threshold)

    def invert(self, images: torch.Tensor, labels: torch.Tensor | None = None, steps: int = DEFAULT_STEPS["ddim"],
               refine: int = 0, progress: bool = True) -> torch.Tensor:
        """Inversion: float images in [0, 1] (N, C, H, W) -> the latents x_T that ``decode`` maps back to them. For
        ddpm models DDIM inversion (samplers.invert_ddim); for edm and flow models the same idea on their ODE, Euler
        towards noise (samplers.continuous.invert_objective), the latents scaled as the standard-normal noise their
        samplers start from. A conditional model inverts with each image's class (or the null label)."""
        self._refuse_student("inversion")
        self.check_steps(steps)
        x_0 = to_model_range(images, self.config.data.zero_one).to(self.device)
        x_0 = x_0.contiguous(memory_format=self.memory_format)
        if self.objective != "ddpm":
            return invert_objective(self.objective, objective_of(self.config.diffusion), self.denoiser(labels), x_0,
                                    steps=steps, refine=refine, progress=progress)
        return invert_ddim(self.denoiser(labels), self.schedule, x_0, steps=steps,
                           prediction=self.config.diffusion.prediction, refine=refine, progress=progress)

    def decode(self, latents: torch.Tensor, labels: torch.Tensor | None = None, steps: int = DEFAULT_STEPS["ddim"],
               progress: bool = True, guidance: float = 0.0) -> torch.Tensor:
        """The exact counterpart of ``invert`` -> images in [0, 1]: deterministic DDIM (eta = 0, no clipping) for
        ddpm models, Euler for edm and flow models; ``guidance`` w towards ``labels`` (edit's invert route)."""
        self._refuse_student("decoding inverted latents")
        if self.objective != "ddpm":
            return self.to_images(self.run(latents, labels=labels, guidance=guidance, sampler="euler", steps=steps,
                                           progress=progress))
        return self.to_images(self.run(latents, labels=labels, guidance=guidance, sampler="ddim", steps=steps,
                                       clip=False, progress=progress))

    def inpaint(self, images: torch.Tensor, mask, **options) -> torch.Tensor:
        """Inpainting: generate where ``mask`` is 1 (white) so that it fits the known rest of each image, which comes
        back unchanged. ``images``: (N, C, H, W), uint8 or float in [0, 1]; ``mask``: a shape name (editing.masks:
        left, right, top, bottom, centre, random-boxes), a PNG file, or a tensor of zeros and ones.

        >>> completed = sampler.inpaint(images, "right", method="repaint", completions=4, seed=0)

        method: ``repaint`` (Lugmayr et al. 2022: resampling with ``jump_length``, ``jump_n_sample``) or
        ``replace`` (the known part replaced by the noised original at each step); steps, sampler_name (ddpm, or ddim
        with ``eta``), labels and guidance, completions per image, seed, batch_size: editing.edits.inpaint_images."""
        return inpaint_images(self, images, mask, **options)

    def edit(self, images: torch.Tensor, strength: float = SDEDIT_STRENGTH, method: str = "sdedit",
             **options) -> torch.Tensor:
        """Image-to-image. ``sdedit`` (Meng et al. 2022): noise each image to ``strength`` (0 keeps it, 1 draws anew)
        and denoise, towards ``labels`` with ``guidance`` for a class swap (editing.edits.sdedit_images). ``invert``:
        the faithful route, DDIM inversion with ``source_labels`` then the deterministic sampler towards ``labels``
        (editing.edits.inverted_edit_images; strength does not apply)."""
        if method == "sdedit":
            return sdedit_images(self, images, strength, **options)
        if method == "invert":
            if strength != SDEDIT_STRENGTH:
                raise DdpmkitError("strength is SDEdit's; the invert route always goes all the way to noise and back")
            return inverted_edit_images(self, images, **options)
        raise DdpmkitError(f"unknown edit method {method!r}; choose sdedit or invert")

    def _refuse_student(self, what: str) -> None:
        if self.family == "student":
            raise DdpmkitError(f"{what} runs the model's ODE over many steps, which a distilled student does not "
                               f"learn; use its teacher ({self.config.distill.teacher})")

    def check_steps(self, steps: int | None) -> None:
        """Refuse a step count outside 1..T with a one-line error."""
        T = self.schedule.num_timesteps
        if steps is not None and not 1 <= steps <= T:
            raise DdpmkitError(f"steps must be between 1 and T={T}, got {steps}")

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-range tensors -> float images in [0, 1] on the CPU."""
        return from_model_range(x.float().cpu(), self.config.data.zero_one)

    def noise(self, seeds: Sequence[int]) -> tuple[torch.Tensor, ImageNoise]:
        """x_T for the given per-image seeds, and the generators that go on to draw each image's step noise."""
        return seeded_noise(seeds, self.image_shape)

    def generate(self, seeds: Sequence[int], labels: Sequence[int] | None = None, batch_size: int = 256,
                 **options) -> torch.Tensor:
        """Images for explicit per-image seeds (and class labels), in batches; float in [0, 1] on the CPU; ``options``
        are ``run``'s. Under torchrun every process returns all the images, in order (see
        seeded_sampling.generate_images)."""
        options = {**options, "progress": options.get("progress", True) and distributed.is_main()}
        return generate_images(lambda x_T, noise, y: self.to_images(self.run(x_T, noise, labels=y, **options)),
                               self.image_shape, seeds, labels, batch_size, options["progress"])

    def sample(self, num_samples: int = 16, sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
               seed: int = 0, batch_size: int = 256, clip: bool | None = None, labels: Sequence[int] | None = None,
               guidance: float = 0.0, progress: bool = True, **options) -> torch.Tensor:
        """Draw ``num_samples`` images with ``sampler`` (a name in samplers.SAMPLERS; default sde-dpm++2m at its
        config.DEFAULT_STEPS count, the best for 10-50 network evaluations in docs/samplers.md; for edm and flow
        models euler, heun or the DPM-Solver++/UniPC family, default config.default_sampler); float in [0, 1] on the CPU.

        ``labels`` (one class index per image) and ``guidance`` w sample a conditional model; without labels a
        conditional model samples unconditionally (the null label). Other options (spacing, threshold,
        guidance_rescale, ...) are ``run``'s.
        """
        if num_samples < 1:
            raise DdpmkitError("num_samples must be at least 1")
        return self.generate(list(range(seed, seed + num_samples)), labels, batch_size, sampler=sampler,
                             steps=steps, eta=eta, clip=clip, guidance=guidance, progress=progress, **options)

    def sample_classes(self, classes: str | Sequence, per_class: int = 8, seed: int = 0,
                       **options) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` images of each class (by index or name, or 'all'), class after class; every class uses
        seeds seed .. seed + per_class - 1, so a column shares its starting noise. Returns (images, labels)."""
        if per_class < 1:
            raise DdpmkitError(f"per_class must be at least 1, got {per_class}")
        indices = self.class_indices(classes) if isinstance(classes, (str, int)) else \
            [self.class_indices(c)[0] for c in classes]
        labels = [c for c in indices for _ in range(per_class)]
        seeds = [seed + j for _ in indices for j in range(per_class)]
        return self.generate(seeds, labels, **options), torch.tensor(labels)

    def sample_ancestral(self, num_samples: int = 16, steps: int | None = None, **kwargs) -> torch.Tensor:
        """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), over all T steps or ``steps`` respaced ones."""
        return self.sample(num_samples, sampler="ddpm", steps=steps, **kwargs)

    def sample_deterministic(self, num_samples: int = 16, steps: int | None = None, **kwargs) -> torch.Tensor:
        """DDIM with eta = 0 over all T steps (or ``steps``)."""
        return self.sample(num_samples, sampler="deterministic", steps=steps, **kwargs)

    def sample_ddim(self, num_samples: int = 16, steps: int | None = None, eta: float = 0.0,
                    **kwargs) -> torch.Tensor:
        """DDIM (Song et al. 2020) over ``steps`` timesteps (None: DEFAULT_STEPS, at most T) with noise scale
        ``eta``."""
        return self.sample(num_samples, sampler="ddim", steps=steps, eta=eta, **kwargs)

    def sample_dpm_solver(self, num_samples: int = 16, steps: int | None = None, order: int = 2,
                          **kwargs) -> torch.Tensor:
        """DPM-Solver++(2M) or, with ``order=3``, (3M) (Lu et al. 2022): ``steps`` network evaluations (None:
        DEFAULT_STEPS, at most T)."""
        if order not in (2, 3):
            raise DdpmkitError(f"order must be 2 or 3, got {order}")
        return self.sample(num_samples, sampler=f"dpm++{order}m", steps=steps, **kwargs)

    def sample_unipc(self, num_samples: int = 16, steps: int | None = None, order: int = 2, variant: str = "bh2",
                     **kwargs) -> torch.Tensor:
        """UniPC (Zhao et al. 2023): ``steps`` network evaluations (None: DEFAULT_STEPS, at most T), predictor of
        ``order`` 1-3 with the UniC corrector (one order more), B(h) ``variant`` bh1 or bh2."""
        if order not in (1, 2, 3):
            raise DdpmkitError(f"order must be 1, 2 or 3, got {order}")
        if variant not in UNIPC_VARIANTS:
            raise DdpmkitError(f"variant must be one of {', '.join(UNIPC_VARIANTS)}, got {variant!r}")
        return self.sample(num_samples, sampler="unipc", steps=steps, order=order, variant=variant, **kwargs)

    def sample_heun(self, num_samples: int = 16, steps: int | None = None, churn: float = 0.0,
                    **kwargs) -> torch.Tensor:
        """EDM's Heun sampler (Karras et al. 2022, Algorithm 1; Algorithm 2 with ``churn``): ``steps`` noise
        levels (None: DEFAULT_STEPS, at most T), 2 steps - 1 network evaluations."""
        return self.sample(num_samples, sampler="heun", steps=steps, churn=churn, **kwargs)
