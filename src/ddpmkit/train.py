"""The training loop: one function you can read top to bottom, its state in plain sight.

A run directory holds ``config.json`` (the resolved config), ``log.jsonl`` (one record per log interval),
``latest.pt`` / ``best.pt`` / ``final.pt``, ``samples/`` (grids), ``loss.png`` and ``tensorboard/``.
Running the same command again in the same run directory resumes from ``latest.pt``.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .build import autocast, noise_schedule, resolve_device, sampler_options, set_tf32, unet_spec
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, TrainConfig, config_from_dict
from .data import BatchOrder, ImageData, batch_stream, load_images, to_model_range
from .ema import EMA
from .errors import DdpmkitError
from .guidance import drop_labels
from .losses import diffusion_loss
from .samplers import SAMPLERS, ImageNoise
from .unet import UNet
from .viz import plot_loss_curve, save_grid


class StopAtStepBoundary:
    """Ctrl-C handling that never saves half a step: the first Ctrl-C asks the loop to finish its step, save
    ``latest.pt`` and stop; a second one stops at once (``latest.pt`` then holds the last regular checkpoint)."""

    def __enter__(self) -> "StopAtStepBoundary":
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step and saving latest.pt (press again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def learning_rate(step: int, t: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _heldout_set(cfg: Config, train_data: ImageData) -> tuple[torch.Tensor, torch.Tensor | None, str, ImageData]:
    """Held-out images for the 'best' checkpoint: the test split's first ``eval_images``, or, when the dataset has
    no test split (an image folder, a training-only IDX folder), the last ``eval_images`` of the training set,
    which are then removed from training."""
    n = cfg.train.eval_images
    try:
        test = load_images(cfg.data, "test")
    except (DdpmkitError, RuntimeError, OSError):
        test = None
    if test is not None and test.images is not None and len(test):
        return test.images[:n], (test.labels[:n] if test.labels is not None else None), "test split", train_data
    if test is not None and len(test):  # decoded on the fly (CelebA): materialise the first n
        pairs = [test.dataset[i] for i in range(min(n, len(test)))]
        labels = torch.tensor([y for _, y in pairs]) if test.class_names else None
        return torch.stack([x for x, _ in pairs]), labels, "test split", train_data
    if train_data.images is None or len(train_data) <= n:
        raise DdpmkitError(f"no test split and too few in-memory training images to hold out {n}; "
                           f"--set train.eval_every=0 turns the held-out evaluation off")
    keep = len(train_data) - n
    images, labels = train_data.images, train_data.labels
    trimmed = ImageData(images[:keep], labels[:keep] if labels is not None else None, None,
                        train_data.class_names, train_data.channels, train_data.source)
    return images[keep:], (labels[keep:] if labels is not None else None), "last images of train", trimmed


@torch.no_grad()
def heldout_loss(model, schedule, images: torch.Tensor, labels, cfg: Config, device: torch.device) -> float:
    """Loss on fixed images at fixed timesteps (evenly spread over 0..T-1) and fixed noise: comparable across steps."""
    g = torch.Generator().manual_seed(12345)
    total, count = 0.0, 0
    for start in range(0, len(images), 256):
        x0 = to_model_range(images[start: start + 256], cfg.data.zero_one).to(device)
        n = len(x0)
        t = (torch.arange(start, start + n) * schedule.num_timesteps // len(images)).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        y = labels[start: start + n].to(device) if labels is not None and model.spec.num_classes else None
        with autocast(device, cfg.train.precision):
            loss = diffusion_loss(model, schedule, x0, t, noise, y, prediction=cfg.diffusion.prediction,
                                  loss=cfg.diffusion.loss)
        total, count = total + float(loss) * n, count + n
    return total / count


@torch.no_grad()
def sample_images(model: UNet, schedule, cfg: Config, device: torch.device, num_images: int, sampler: str,
                  steps: int, batch_size: int = 500) -> torch.Tensor:
    """Samples of ``model`` with seeds 0..num_images-1, in [0, 1] on the CPU; a conditional model draws class
    i mod K for image i, so every class is (nearly) equally represented."""
    spec, chunks = model.spec, []
    for start in range(0, num_images, batch_size):
        seeds = range(start, min(start + batch_size, num_images))
        noise = ImageNoise.from_seeds(seeds)
        x_T = noise.randn((len(seeds), spec.image_channels, spec.image_size, spec.image_size)).to(device)
        y = torch.tensor([i % spec.num_classes for i in seeds], device=device) if spec.num_classes else None
        options = sampler_options(cfg, sampler, None if sampler == "deterministic" else steps)
        chunks.append(SAMPLERS[sampler](lambda x, t: model(x, t, y), schedule, x_T, noise=noise, progress=False,
                                        **options).float().cpu())
    x0 = torch.cat(chunks)
    return x0.clamp(0, 1) if cfg.data.zero_one else ((x0 + 1) / 2).clamp(0, 1)


class TrainingFD:
    """FD-<dataset>-classifier of the EMA model during training: a fixed set of seeds and sampler, so that values
    are comparable between evaluations; the real test-split statistics come from the cache evaluate shares
    (``cache_dir``, default ``~/.cache/ddpmkit/statistics``), under the key of the images this run's config gives."""

    def __init__(self, cfg: Config, image_shape: tuple[int, int, int], class_names: list[str],
                 cache_dir: str | Path | None = None):
        from .metrics.classifier import check_compatible, load_classifier
        from .metrics.domain import DEFAULT_CACHE, statistics_key

        self.cfg, self.cache_dir = cfg, DEFAULT_CACHE if cache_dir is None else cache_dir
        self.classifier, info = load_classifier(cfg.train.fd_classifier or cfg.data.dataset)
        check_compatible(info, class_names, image_shape[-1])
        self.image_shape = image_shape
        self.real = load_images(cfg.data, "test").images
        self.key = statistics_key(cfg.data.dataset, "test", self.real, info["sha256"])
        self.name = f"fd_{cfg.data.dataset}_classifier"

    def __call__(self, model: UNet, schedule, device: torch.device) -> float:
        from .metrics.domain import add_fake, add_real, classifier_fd_metric

        t = self.cfg.train
        images = sample_images(model, schedule, self.cfg, device, t.fd_samples, t.fd_sampler, t.fd_steps)
        metric = classifier_fd_metric(self.classifier, self.image_shape)
        add_real(metric, self.real, self.key, self.cache_dir, progress=False)
        add_fake(metric, images, progress=False)
        return float(metric.compute())


# Keys that may differ between a run and its resumption (everything else fixes the model or the batch order).
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "checkpoint_every", "eval_every", "grid_images",
                     "grid_sampler", "grid_steps", "compile", "compile_mode", "tf32", "device", "num_workers",
                     "fd_every", "fd_samples", "fd_sampler", "fd_steps", "fd_classifier"}


def _check_resumable(saved: Config, cfg: Config) -> None:
    diffs = []
    for section in ("data", "model", "diffusion", "train"):
        old, new = vars(getattr(saved, section)), vars(getattr(cfg, section))
        diffs += [f"{section}.{k}: {v!r} -> {new[k]!r}" for k, v in old.items()
                  if new[k] != v and k not in RESUMABLE_CHANGES]
    if diffs:
        raise DdpmkitError(f"cannot resume: the config changed ({'; '.join(diffs)}). Use a new --run-dir, or "
                           f"restore the old values")


def train(cfg: Config, run_dir: str | Path, resume: str | Path | bool = True, stop_at: int | None = None,
          progress: bool = True) -> Path:
    """Train a model as ``cfg`` says, writing everything into ``run_dir``; returns the last checkpoint written.

    resume:  True resumes from ``run_dir/latest.pt`` when it exists; a path resumes from that checkpoint; False
             starts afresh (refusing to overwrite a run directory that has checkpoints).
    stop_at: stop after this step as if interrupted (``latest.pt`` written), for time-boxed jobs and tests.
    """
    t_cfg = cfg.train
    if stop_at is not None and stop_at < 1:
        raise DdpmkitError(f"--stop-at must be a step >= 1, got {stop_at}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(t_cfg.device)
    set_tf32(device, t_cfg.tf32)
    torch.manual_seed(t_cfg.seed)

    # -- resume point --------------------------------------------------------------------------------------------
    ckpt_path = Path(resume) if isinstance(resume, (str, Path)) else run_dir / "latest.pt"
    state = None
    if resume is not False and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        _check_resumable(config_from_dict(state["config"]), cfg)
    elif isinstance(resume, (str, Path)):
        raise DdpmkitError(f"--resume {ckpt_path}: no such checkpoint")
    elif resume is False and (run_dir / "latest.pt").exists():
        raise DdpmkitError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --run-dir")
    if state is not None and int(state["step"]) >= t_cfg.steps:
        print(f"{run_dir}: already trained for {state['step']} steps (train.steps={t_cfg.steps}); nothing to do")
        return run_dir / "final.pt" if (run_dir / "final.pt").is_file() else ckpt_path

    # -- data, model, optimisation ---------------------------------------------------------------------------------
    data = load_images(cfg.data, "train")
    heldout_images = heldout_labels = None
    if t_cfg.eval_every:
        heldout_images, heldout_labels, heldout_source, data = _heldout_set(cfg, data)
    spec = unet_spec(cfg, data.channels, data.num_classes)
    model = UNet(spec).to(device)
    if t_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, t_cfg.ema_decay, t_cfg.ema_warmup)
    schedule = noise_schedule(cfg.diffusion).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t_cfg.lr, betas=tuple(t_cfg.adam_betas),
                                  weight_decay=t_cfg.weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=t_cfg.precision == "fp16")
    noise_gen = torch.Generator(device=device).manual_seed(t_cfg.seed + 1)  # timesteps, noise, flips, label drops
    step, best = 0, math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        noise_gen.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step, best = int(state["step"]), float(state.get("best", math.inf))
    network = torch.compile(model, mode=t_cfg.compile_mode) if t_cfg.compile else model
    training_fd = (TrainingFD(cfg, (spec.image_channels, spec.image_size, spec.image_size), data.class_names)
                   if t_cfg.fd_every else None)

    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    log_file = (run_dir / "log.jsonl").open("a")
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"ddpmkit: {cfg.data.dataset} ({len(data)} images from {data.source}), U-Net {num_params / 1e6:.2f}M "
          f"parameters, {device}, {t_cfg.precision}; run dir {run_dir}" + (f", resuming at step {step}" if step else ""))

    def checkpoint(name: str) -> Path:
        return save_checkpoint({
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "step": step, "best": best,
            "config": cfg.to_dict(), "unet": vars(spec).copy(), "class_names": data.class_names,
            "rng": {"torch": torch.get_rng_state(), "noise": noise_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }, run_dir / f"{name}.pt")

    def log(record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    # -- the loop ----------------------------------------------------------------------------------------------------
    accum = t_cfg.grad_accum
    order = BatchOrder(len(data), t_cfg.batch_size, t_cfg.seed)
    stop = min(t_cfg.steps, stop_at if stop_at is not None else t_cfg.steps)
    batches = batch_stream(data, order, step * accum, stop * accum, device, cfg.data.num_workers, t_cfg.seed)
    T = schedule.num_timesteps
    null_label = spec.num_classes
    loss_sum = torch.zeros((), device=device)  # summed on the device; read back only every log_every steps
    interval_start, interval_steps = time.perf_counter(), 0
    bar = tqdm(total=t_cfg.steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    model.train()
    with StopAtStepBoundary() as interrupt:
        try:
            while step < stop:
                lr = learning_rate(step, t_cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for _ in range(accum):
                    images, labels = next(batches)
                    x0 = to_model_range(images, cfg.data.zero_one)
                    if t_cfg.channels_last:
                        x0 = x0.contiguous(memory_format=torch.channels_last)
                    n = x0.shape[0]
                    if cfg.data.hflip:
                        flip = torch.rand(n, device=device, generator=noise_gen) < 0.5
                        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
                    y = None
                    if spec.num_classes:  # classifier-free guidance: train the null label with p = label_dropout
                        y = drop_labels(labels, cfg.diffusion.label_dropout, null_label, noise_gen)
                    t = torch.randint(0, T, (n,), device=device, generator=noise_gen)
                    noise = torch.randn(x0.shape, device=device, generator=noise_gen)
                    with autocast(device, t_cfg.precision):
                        loss = diffusion_loss(network, schedule, x0, t, noise, y, prediction=cfg.diffusion.prediction,
                                              loss=cfg.diffusion.loss)
                    scaler.scale(loss / accum).backward()
                    loss_sum += loss.detach() / accum
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip or math.inf)
                scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if not scaler.is_enabled() or scaler.get_scale() >= scale_before:  # fp16 skips steps with inf grads
                    ema.update(model)
                step += 1
                interval_steps += 1
                bar.update(1)

                if step % t_cfg.log_every == 0 or step == stop:
                    elapsed = time.perf_counter() - interval_start
                    record = {"step": step, "loss": loss_sum.item() / interval_steps, "lr": lr,
                              "grad_norm": float(grad_norm),
                              "images_per_s": interval_steps * accum * t_cfg.batch_size / elapsed}
                    log(record)
                    for key in ("loss", "lr", "grad_norm", "images_per_s"):
                        writer.add_scalar(f"train/{key}", record[key], step)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                    loss_sum.zero_()
                    interval_start, interval_steps = time.perf_counter(), 0

                finished = step == t_cfg.steps
                extra_work_start = time.perf_counter()  # evaluation, grids and checkpoints don't count against images/s
                if step % t_cfg.checkpoint_every == 0 or step == stop or interrupt.requested:
                    checkpoint("latest")  # first, so nothing after it can lose this step's work
                if heldout_images is not None and (step % t_cfg.eval_every == 0 or finished):
                    value = heldout_loss(ema.model, schedule, heldout_images, heldout_labels, cfg, device)
                    log({"step": step, "heldout_loss": value, "heldout": heldout_source})
                    writer.add_scalar("eval/heldout_loss_ema", value, step)
                    if t_cfg.best_by == "heldout_loss" and value < best:
                        best = value
                        checkpoint("best")
                if training_fd is not None and (step % t_cfg.fd_every == 0 or finished):
                    value = training_fd(ema.model, schedule, device)
                    log({"step": step, training_fd.name: value, "fd_sampler": t_cfg.fd_sampler,
                         "fd_steps": t_cfg.fd_steps, "fd_samples": t_cfg.fd_samples})
                    writer.add_scalar(f"eval/{training_fd.name}_ema", value, step)
                    if t_cfg.best_by == "fd" and value < best:
                        best = value
                        checkpoint("best")
                if t_cfg.sample_every and step % t_cfg.sample_every == 0 or finished:
                    grid = sample_images(ema.model, schedule, cfg, device, t_cfg.grid_images, t_cfg.grid_sampler,
                                         t_cfg.grid_steps)
                    save_grid(grid, run_dir / "samples" / f"step_{step:07d}.png")
                    writer.add_images("samples/ema", grid, step)
                if interrupt.requested:
                    raise KeyboardInterrupt
                interval_start += time.perf_counter() - extra_work_start
        except KeyboardInterrupt:
            bar.close()
            saved = f"saved {run_dir / 'latest.pt'} at step {step}" if interrupt.requested else \
                f"{run_dir / 'latest.pt'} holds the last checkpoint"
            print(f"\ninterrupted: {saved}; run the same command again to resume", file=sys.stderr)
            raise
        finally:
            bar.close()
            writer.close()
            log_file.close()
            plot_loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")

    if step < t_cfg.steps:
        return run_dir / "latest.pt"
    return checkpoint("final")
