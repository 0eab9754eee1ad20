"""The model card (``README.md``) of an exported diffusers folder, in the Hugging Face Hub's form: YAML metadata,
then what the model is, how it was trained, how to sample it, what was measured and how to train it again."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import Config, default_sampler, linear_beta_scale, sampler_family, steps_for
from ..unet import UNetSpec
from .diffusers_scheduler import TIMESTEP_SPACINGS

DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "celeba": "CelebA",
                 "folder": "an image folder"}
HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist",
                "cifar10": "uoft-cs/cifar10"}


def _schedule(cfg: Config) -> str:
    d = cfg.diffusion
    if d.beta_schedule == "linear":
        T, scale = d.num_timesteps, linear_beta_scale(d.num_timesteps)
        return f"linear betas {d.beta_start * scale:g} to {d.beta_end * scale:g} over T = {T} (Ho et al. 2020)"
    return f"cosine (Nichol & Dhariwal 2021, eq. 17, s = {d.cosine_s:g}) over T = {d.num_timesteps}"


def _architecture(spec: UNetSpec, num_params: int) -> str:
    widths = ", ".join(str(spec.base_channels * m) for m in spec.channel_mults)
    attention = (f"self-attention at {', '.join(f'{r}x{r}' for r in spec.attention_resolutions)}"
                 if spec.attention_resolutions else "no self-attention in the levels")
    middle = "with" if spec.middle_attention else "without"
    return (f"DDPM U-Net, {num_params / 1e6:.2f}M parameters: widths {widths}, {spec.num_res_blocks} ResBlock(s) per "
            f"level, {attention}, middle block {middle} attention, {spec.attention_heads} head(s), "
            f"GroupNorm({spec.norm_groups}), dropout {spec.dropout:g}")


def _metrics_table(reports: Sequence[dict], weights: str) -> list[str]:
    if weights == "raw":
        return ["Not measured: `ddpmkit evaluate` measures a checkpoint's EMA weights, and this folder holds the raw "
                "ones."]
    if not reports:
        return ["Not measured when this folder was written. `ddpmkit evaluate --checkpoint CHECKPOINT` measures the "
                "checkpoint, and exporting again puts its numbers here."]
    lines = ["| metric | value | sampler | steps | guidance | samples | against |", "|---|---|---|---|---|---|---|"]
    for report in reports:
        s, real = report.get("samples", {}), report.get("real", {})
        against = f"{real.get('count', '?')} {real.get('dataset', '?')} {real.get('split', '')} images"
        for name, value in report.get("metrics", {}).items():
            lines.append(f"| {name} | {value:.4f} | {s.get('sampler', '?')} | {s.get('steps', '?')} | "
                         f"{s.get('guidance', 0):g} | {s.get('num_samples', '?')} | {against} |")
    lines += ["", "Measured by `ddpmkit evaluate` on the checkpoint this folder was exported from (the full reports "
              "are ddpmkit's metrics.json). FD-<dataset>-classifier and the classifier IS use ddpmkit's judge "
              "classifier, not Inception: compare them only with numbers measured the same way."]
    return lines


PREDICTS = {"eps": "the noise (epsilon)", "x0": "the clean image x_0", "v": "v (Salimans & Ho 2022)"}


def _front_matter(data_dataset: str, conditional: bool) -> list[str]:
    task = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    # The Hub's pipeline tag says which pipeline runs it: DDPMPipeline cannot pass class labels.
    pipeline = [] if conditional else ["pipeline_tag: unconditional-image-generation"]
    lines = ["---", "library_name: diffusers", *pipeline, "tags:",
             *[f"- {t}" for t in ("pytorch", "diffusers", "ddpmkit", "ddpm", task)]]
    if data_dataset in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[data_dataset]}"]
    return [*lines, "---"]


def _weights(cfg: Config, kind: str, source: str) -> str:
    train = cfg.train
    if kind == "unknown":
        return f"as saved in `{source}`"
    if kind == "raw":
        return "the trained weights themselves (not their moving average)"
    length = (f"half-life {train.ema_halflife_images:,} training images" if train.ema_halflife_images
              else f"decay {train.ema_decay:g} per step")  # training uses the half-life when one is set
    return f"the exponential moving average of the trained weights ({length})"


def _model_section(cfg: Config, spec: UNetSpec, info: dict, num_params: int) -> list[str]:
    d = cfg.diffusion
    weights = _weights(cfg, info["weights"], info["exported_from"])
    variance = "posterior (beta-tilde)" if d.variance == "posterior" else "beta_t"
    clipped = "clipped to [-1, 1]" if d.clip_x0 else "not clipped"
    process = (f"{_schedule(cfg)}; the network predicts {PREDICTS[d.prediction]}; ancestral sampling variance "
               f"{variance}; predicted x_0 {clipped}" if d.objective == "ddpm" else
               "rectified flow, x_t = (1 - t) x_0 + t eps (Liu et al. 2022; Esser et al. 2024), logit-normal t in "
               "training; the network predicts the velocity eps - x_0 from x_t and 1000 t")
    lines = ["## Model", "",
             f"- Network: {_architecture(spec, num_params)}; diffusers' `UNet2DModel` (`unet/config.json`).",
             f"- Diffusion: {process} (`scheduler/scheduler_config.json`).",
             f"- Weights: {weights}.",
             f"- Images: {'greyscale' if spec.image_channels == 1 else 'RGB'}, in [-1, 1]."]
    if spec.num_classes:
        names = ", ".join(f"{i} {n}" for i, n in enumerate(info["class_names"]))
        lines.append(f"- Classes: {spec.num_classes} ({names}), plus the null label {info['null_label']} of "
                     f"classifier-free guidance (Ho & Salimans 2022): `class_labels={info['null_label']}` is the "
                     f"unconditional model.")
    return lines


def _training_section(cfg: Config, step: int, conditional: bool) -> list[str]:
    data, train, d = cfg.data, cfg.train, cfg.diffusion
    source = DATASET_NAMES.get(data.dataset, data.dataset)
    subset = f", {data.max_images} images" if data.max_images else ""
    flips = ", random horizontal flips" if data.hflip else ""
    seen = (f"- {step:,} optimizer steps of {train.batch_size} images: {step * train.batch_size:,} training images "
            f"seen." if step else "- Steps: unknown.")
    weighting = f" with Min-SNR-{d.min_snr_gamma:g} weighting" if d.loss_weighting == "min_snr" else ""
    weighting += " of the velocity" if d.objective == "flow" else ""
    dropout = f", label dropout {d.label_dropout:g}" if conditional else ""
    return ["## Training", "", f"- Data: {source}{subset}{flips}.", seen,
            f"- AdamW, learning rate {train.lr:g} (warm-up {train.warmup_steps} steps, cosine to "
            f"{train.min_lr_ratio:g} x), betas {tuple(train.adam_betas)}, weight decay {train.weight_decay:g}, "
            f"gradient clip {train.grad_clip:g}, {train.precision}; loss {d.loss}{weighting}{dropout}."]


@dataclass(frozen=True)
class DiffusersSampling:
    """How the card's diffusers example samples a model of one diffusion.objective."""
    pipeline_scheduler: str            # the exported scheduler, which DDPMPipeline runs (unconditional models)
    pipeline_steps: Callable[[int], int]  # its num_inference_steps for a T-step model
    loop_scheduler: str                # the scheduler of the guided loop (conditional models)
    loop_steps: Callable[[int], int]
    step_call: str                     # the loop's step on the guided output


DIFFUSERS_SAMPLING = {
    "ddpm": DiffusersSampling("DDPMScheduler", lambda T: T, "DDIMScheduler", lambda T: min(50, T),
                              "scheduler.step(guided, t, x, use_clipped_model_output=True).prev_sample  # as ddpmkit's "
                              "ddim"),
    "flow": DiffusersSampling("FlowMatchEulerDiscreteScheduler", lambda T: steps_for("flow", "euler"),
                              "FlowMatchEulerDiscreteScheduler", lambda T: steps_for("flow", "euler"),
                              "scheduler.step(guided, t, x).prev_sample  # ddpmkit's euler at the scheduler's times"),
}


def _student_sampling(steps: int) -> DiffusersSampling:
    """A progressive ddpm student (the one student diffusers can run): DDIM's steps at its own K, trailing."""
    return DiffusersSampling("DDIMScheduler", lambda T: steps, "DDIMScheduler", lambda T: steps,
                             DIFFUSERS_SAMPLING["ddpm"].step_call.replace("ddim", "distilled sampler"))


def _diffusers_example(cfg: Config, spec: UNetSpec, null_label: int | None) -> list[str]:
    """Python that samples the folder with diffusers alone (tests run it and compare with ddpmkit): DDPMPipeline for
    an unconditional model (DDIMPipeline for a student), a guided loop over the scheduler's timesteps for a
    conditional one."""
    K = cfg.distill.student_steps
    how = _student_sampling(K) if cfg.distill.method else DIFFUSERS_SAMPLING[cfg.diffusion.objective]
    T, size = cfg.diffusion.num_timesteps, cfg.data.image_size
    if cfg.distill.method:
        if not spec.num_classes:
            return ["from diffusers import DDIMPipeline", "",
                    'pipeline = DDIMPipeline.from_pretrained("PATH_OR_HUB_ID")  # with its DDIMScheduler, trailing',
                    f"images = pipeline(batch_size=16, num_inference_steps={K}, eta=0.0, "
                    f"use_clipped_model_output=True).images  # its own {K} steps"]
    if not spec.num_classes:
        return ["from diffusers import DDPMPipeline", "",
                f'pipeline = DDPMPipeline.from_pretrained("PATH_OR_HUB_ID")  # with its {how.pipeline_scheduler}',
                f"images = pipeline(batch_size=16, num_inference_steps={how.pipeline_steps(T)}).images  # PIL images"]
    return [
        "import torch",
        f"from diffusers import {how.loop_scheduler}, UNet2DModel",
        "",
        'unet = UNet2DModel.from_pretrained("PATH_OR_HUB_ID", subfolder="unet").eval()',
        f'scheduler = {how.loop_scheduler}.from_pretrained("PATH_OR_HUB_ID", subfolder="scheduler")',
        f"scheduler.set_timesteps({how.loop_steps(T)})",
        f"labels, w = torch.arange({spec.num_classes}), 1.0  # one image per class; guidance weight w",
        f"null = torch.full_like(labels, {null_label})  # the null label: the unconditional model",
        f"x = torch.randn(len(labels), {spec.image_channels}, {size}, {size})",
        "with torch.no_grad():",
        "    for t in scheduler.timesteps:",
        "        both = unet(x.repeat(2, 1, 1, 1), t, class_labels=torch.cat([labels, null])).sample",
        "        cond, uncond = both.chunk(2)",
        "        guided = cond + w * (cond - uncond)  # Ho & Salimans 2022, eq. 6",
        f"        x = {how.step_call}",
        "images = (x / 2 + 0.5).clamp(0, 1)",
    ]


def _sampling_section(cfg: Config, spec: UNetSpec, null_label: int | None) -> list[str]:
    classes = " --class all --guidance 1" if spec.num_classes else ""
    sampler = default_sampler(sampler_family(cfg))
    steps = cfg.distill.student_steps if cfg.distill.method else steps_for(cfg.diffusion.objective, sampler)
    command = (f"ddpmkit sample --checkpoint PATH_OR_HUB_ID --sampler {sampler} "
               f"--steps {steps}{classes} --num-samples 16")
    if cfg.distill.method:
        diffusers = (f"This is a {steps}-step student (progressive distillation from `{cfg.distill.teacher}`). With "
                     f"diffusers, DDIMScheduler with `timestep_spacing` trailing and {steps} steps visits the "
                     f"timesteps it was distilled at; `use_clipped_model_output=True` takes ddpmkit's step:")
    elif cfg.diffusion.objective == "flow":
        diffusers = ("With diffusers, whose FlowMatchEulerDiscreteScheduler takes the Euler steps of ddpmkit's "
                     "`--sampler euler` (at its own times, 1 down to 1/1000, then 0):")
    else:
        spacing = TIMESTEP_SPACINGS[cfg.diffusion.variance]
        diffusers = (f"With diffusers, whose schedulers take the timestep spacing `{spacing}` from "
                     f"`scheduler/scheduler_config.json` (with fewer steps than T they visit the timesteps of "
                     f"ddpmkit's `--spacing {spacing}`):")
    return ["## Sampling", "", "With ddpmkit (any of its samplers; this folder is read as it is):", "",
            "```bash", command, "```", "", diffusers, "", "```python", *_diffusers_example(cfg, spec, null_label),
            "```"]


def model_card(cfg: Config, spec: UNetSpec, info: dict, metrics: Sequence[dict], num_params: int,
               training_known: bool = True) -> str:
    """README.md for a diffusers folder written by ddpmkit. ``training_known``: the model was trained by ddpmkit
    and its config says how; otherwise (another program's model, converted) nothing about its training is said."""
    conditional = spec.num_classes > 0
    task = "A class-conditional" if conditional else "An unconditional"
    size = f"{cfg.data.image_size}x{cfg.data.image_size}"
    if not training_known:
        colours = "greyscale" if spec.image_channels == 1 else "RGB"
        return "\n".join([
            *_front_matter("", conditional), "", f"# {task} DDPM, {size} {colours}, converted by ddpmkit", "",
            *_model_section(cfg, spec, info, num_params), "",
            "## Training", "", f"Not trained with ddpmkit: converted from `{info['exported_from']}`, whose training "
            f"is not recorded here.", "",
            *_sampling_section(cfg, spec, info["null_label"]), "",
            "## Metrics", "", *_metrics_table(metrics, info["weights"]), ""])
    kind = {"ddpm": "DDPM", "flow": "rectified-flow model"}[cfg.diffusion.objective]
    if cfg.distill.method:
        kind += f" distilled to {cfg.distill.student_steps} steps"
    title = f"# {task} {kind} of {DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)}, {size}, trained with ddpmkit"
    lines = [*_front_matter(cfg.data.dataset, conditional), "", title, "",
             *_model_section(cfg, spec, info, num_params), "",
             *_training_section(cfg, info["step"], conditional), "",
             *_sampling_section(cfg, spec, info["null_label"]), "",
             "## Metrics", "", *_metrics_table(metrics, info["weights"]), "",
             "## Training it again", "",
             "`training_config.json` is the resolved ddpmkit config of the run; with ddpmkit installed:", "",
             "```bash", "ddpmkit train --config training_config.json --run-dir runs/again", "```", "",
             f"Exported from `{info['exported_from']}` with ddpmkit {info['ddpmkit_version']} (`ddpmkit export "
             f"--format diffusers`); `ddpmkit.json` holds the class names and the training step.", ""]
    return "\n".join(lines)
