"""The training loop: one function you can read top to bottom, its state in plain sight.

A run directory holds ``config.json`` (the resolved config), ``log.jsonl`` (one record per log interval),
``checkpoints/step_NNNNNNNN.pt`` (the last ``train.keep_checkpoints``) with ``latest.pt`` / ``best.pt`` /
``final.pt`` beside them, ``samples/`` (grids), ``loss.png`` and ``tensorboard/``. Running the same command again in
the same run directory resumes from the newest intact checkpoint. What may go wrong on the way, and what then
happens, is in docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from . import distributed
from .build import autocast, noise_schedule, sampler_options, set_tf32, unet_spec
from .checkpoint import (link_checkpoint, load_weights, newest_intact, periodic_path, read_checkpoint,
                         resume_candidates, save_checkpoint, save_periodic)
from .config import Config, DiffusionConfig, TrainConfig, config_from_dict
from .data import (BatchOrder, ImageData, batch_stream, from_model_range, hold_out, load_images, load_into_memory,
                   subset, to_model_range)
from .ema import EMA, decay_for_halflife
from .errors import DdpmkitError
from .files import remove_stale_temporaries, write_json
from .global_batch import BatchSplit, StepRandomness, step_seed
from .guidance import drop_labels
from .losses import diffusion_loss
from .nonfinite import NonFiniteGuard, NonFiniteLoss, optimizer_step
from .resources import ResourceMonitor
from .run_log import RunLog
from .samplers import SAMPLERS
from .seeded_sampling import class_blocks, generate_images
from .stop_signals import GracefulStop, StopRequested
from .tensorboard_hparams import end_session, start_session
from .unet import UNet
from .viz import plot_loss_curve, save_grid


def learning_rate(step: int, t: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def objective(d: DiffusionConfig) -> dict:
    """The keyword arguments of ``diffusion_loss`` that the config fixes: trained and held-out losses alike."""
    return {"prediction": d.prediction, "loss": d.loss, "weighting": d.loss_weighting,
            "min_snr_gamma": d.min_snr_gamma}


def _heldout_set(cfg: Config, train_data: ImageData) -> tuple[torch.Tensor, torch.Tensor | None, str, ImageData]:
    """Held-out images for the 'best' checkpoint: the test split's first ``eval_images``, or, when the dataset has
    no test split (an image folder, a training-only IDX folder), ``eval_images`` training images chosen by
    ``data.hold_out`` (seeded, every class in proportion), which are then removed from training."""
    n = cfg.train.eval_images
    try:
        test = load_images(cfg.data, "test")
    except (DdpmkitError, RuntimeError, OSError):
        test = None
    if test is not None and len(test):  # its first n, decoded now if the split is read on the fly (CelebA)
        first = load_into_memory(subset(test, torch.arange(min(n, len(test)))), cfg.data.num_workers)
        return first.images, first.labels, "test split", train_data
    if len(train_data) <= n:
        raise DdpmkitError(f"no test split, and {len(train_data)} training images are too few to hold out "
                           f"train.eval_images={n}; lower it, or --set train.eval_every=0 to turn the held-out "
                           f"evaluation off")
    heldout, rest = hold_out(train_data, n, cfg.data.num_workers)
    return heldout.images, heldout.labels, "held out of train", rest


@torch.no_grad()
def heldout_loss(model, schedule, images: torch.Tensor, labels, cfg: Config, device: torch.device) -> float:
    """Loss on fixed images at fixed timesteps (evenly spread over 0..T-1) and fixed noise: comparable across steps.
    Its batches of 256 are shared out over the processes of a distributed run."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(12345))
    starts = range(0, len(images), 256)
    total = 0.0
    for k in distributed.my_share(len(starts)):
        start = starts[k]
        x0 = to_model_range(images[start: start + 256], cfg.data.zero_one).to(device)
        n = len(x0)
        t = (torch.arange(start, start + n) * schedule.num_timesteps // len(images)).to(device)
        y = labels[start: start + n].to(device) if labels is not None and model.spec.num_classes else None
        with autocast(device, cfg.train.precision):
            loss = diffusion_loss(model, schedule, x0, t, noise[start: start + n].to(device), y,
                                  **objective(cfg.diffusion))
        total += float(loss) * n
    return distributed.sum_over_ranks([total])[0] / len(images)


@torch.no_grad()
def sample_images(model: UNet, schedule, cfg: Config, device: torch.device, num_images: int, sampler: str,
                  steps: int, batch_size: int = 500) -> torch.Tensor:
    """Samples of ``model`` with seeds 0..num_images-1, a conditional model's classes in blocks
    (``seeded_sampling.class_blocks``), in [0, 1] on the CPU: the images ``DiffusionSampler.generate`` draws for
    those seeds and labels. In a distributed run every process gets all the images."""
    spec = model.spec
    options = sampler_options(cfg, sampler, None if sampler == "deterministic" else steps)

    def draw(x_T: torch.Tensor, noise, y: torch.Tensor | None) -> torch.Tensor:
        y = y.to(device) if y is not None else None
        x0 = SAMPLERS[sampler](lambda x, t: model(x, t, y), schedule, x_T.to(device), noise=noise, progress=False,
                               **options)
        return from_model_range(x0.float().cpu(), cfg.data.zero_one)

    labels = class_blocks(num_images, spec.num_classes) if spec.num_classes else None
    return generate_images(draw, (spec.image_channels, spec.image_size, spec.image_size), range(num_images), labels,
                           batch_size, progress=False)


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
        """The FD now; the samples are drawn by all processes, the features and the distance by rank 0."""
        t = self.cfg.train
        images = sample_images(model, schedule, self.cfg, device, t.fd_samples, t.fd_sampler, t.fd_steps)
        return distributed.run_on_main(self.distance, images)

    def distance(self, images: torch.Tensor) -> float:
        from .metrics.domain import add_fake, add_real, classifier_fd_metric

        metric = classifier_fd_metric(self.classifier, self.image_shape)
        add_real(metric, self.real, self.key, self.cache_dir, progress=False)
        add_fake(metric, images, progress=False)
        return float(metric.compute())


# Keys that may differ between a run and its resumption: what fixes neither the model nor the batch order (grad_accum
# only splits the global batch), and the optimisation settings one changes to get a run past a numerical fault (lr,
# grad_clip, precision).
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "checkpoint_every", "eval_every", "grid_images",
                     "grid_sampler", "grid_steps", "compile", "compile_mode", "tf32", "device", "num_workers",
                     "fd_every", "fd_samples", "fd_sampler", "fd_steps", "fd_classifier", "keep_checkpoints",
                     "max_nonfinite_steps", "lr", "grad_clip", "precision", "grad_accum"}


def _check_resumable(saved: Config, cfg: Config) -> None:
    diffs = []
    for section in ("data", "model", "diffusion", "train"):
        old, new = vars(getattr(saved, section)), vars(getattr(cfg, section))
        diffs += [f"{section}.{k}: {v!r} -> {new[k]!r}" for k, v in old.items()
                  if new[k] != v and k not in RESUMABLE_CHANGES]
    if diffs:
        raise DdpmkitError(f"cannot resume: the config changed ({'; '.join(diffs)}). Use a new --run-dir, or "
                           f"restore the old values")


def _resume_point(run_dir: Path, resume: str | Path | bool) -> tuple[dict | None, Path | None]:
    """The checkpoint a run continues from: the one named by ``resume``, else the run directory's newest intact one
    (None for a new run). ``resume=False`` refuses a run directory that already holds checkpoints."""
    if isinstance(resume, (str, Path)):
        path = Path(resume)
        if path.is_dir():
            found = newest_intact(resume_candidates(path))
            if found is None:
                raise DdpmkitError(f"--resume {path}: that folder holds no checkpoint")
            return found
        if not path.is_file():
            raise DdpmkitError(f"--resume {path}: no such checkpoint")
        return read_checkpoint(path), path
    if resume is False:
        if any(p.exists() for p in resume_candidates(run_dir)):
            raise DdpmkitError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new "
                               f"--run-dir")
        return None, None
    return newest_intact(resume_candidates(run_dir)) or (None, None)


def _prepare_run_dir(run_dir: Path, resume: str | Path | bool, cfg: Config) -> tuple[dict | None, Path | None]:
    """Rank 0's part of starting a run: clear what a killed writer left, and read and check the resume point."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)  # left by a run killed while writing
    state, ckpt_path = _resume_point(run_dir, resume)
    if state is not None:
        _check_resumable(config_from_dict(state["config"], source=f"the config inside {ckpt_path}"), cfg)
    return state, ckpt_path


class _Silent:
    """What a rank other than 0 has in place of the log, the TensorBoard writer and the progress bar."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def train(cfg: Config, run_dir: str | Path, resume: str | Path | bool = True, stop_at: int | None = None,
          progress: bool = True) -> Path:
    """Train a model as ``cfg`` says, writing everything into ``run_dir``; returns the last checkpoint written.

    resume:  True resumes from the newest intact checkpoint in ``run_dir`` when there is one; a path resumes from
             that checkpoint (or run directory); False starts afresh (refusing a run directory with checkpoints).
    stop_at: stop after this step as if interrupted (``latest.pt`` written), for time-boxed jobs and tests.

    A run killed at any moment (even ``kill -9``) loses only the steps since its last checkpoint: running the same
    call again resumes and reaches the same weights as a run never interrupted.

    Launched by torchrun, every process runs this function: each trains on its slices of every global batch under
    DistributedDataParallel, and rank 0 alone reads and writes the run directory (docs/distributed.md).
    """
    t_cfg = cfg.train
    if stop_at is not None and stop_at < 1:
        raise DdpmkitError(f"--stop-at must be a step >= 1, got {stop_at}")
    run_dir = Path(run_dir)
    device = distributed.setup(t_cfg.device)
    rank, main = distributed.rank(), distributed.is_main()
    split = BatchSplit(t_cfg.batch_size, distributed.world_size(), t_cfg.grad_accum)
    set_tf32(device, t_cfg.tf32)
    torch.manual_seed(t_cfg.seed)  # the initial weights

    # -- resume point (read by rank 0, passed to the others: only rank 0 needs the run directory) ------------------
    state, ckpt_path = distributed.run_on_main(_prepare_run_dir, run_dir, resume, cfg)
    if state is not None and int(state["step"]) >= t_cfg.steps:
        if main:
            print(f"{run_dir}: already trained for {state['step']} steps (train.steps={t_cfg.steps}); nothing to do")
        return run_dir / "final.pt" if (run_dir / "final.pt").is_file() else ckpt_path

    # -- data, model, optimisation ---------------------------------------------------------------------------------
    with distributed.local_rank_zero_first():  # one download or decoding pass per machine at a time
        data = load_images(cfg.data, "train")
        heldout_images = heldout_labels = None
        if t_cfg.eval_every:
            heldout_images, heldout_labels, heldout_source, data = _heldout_set(cfg, data)
    spec = unet_spec(cfg, data.channels, data.num_classes)
    model = UNet(spec).to(device)
    if t_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema_decay = (decay_for_halflife(t_cfg.ema_halflife_images, t_cfg.batch_size) if t_cfg.ema_halflife_images
                 else t_cfg.ema_decay)
    ema = EMA(model, ema_decay, t_cfg.ema_warmup)
    schedule = noise_schedule(cfg.diffusion).to(device)
    # Fused AdamW (CPU and CUDA) can skip a non-finite step on the device; see nonfinite.py.
    optimizer = torch.optim.AdamW(model.parameters(), lr=t_cfg.lr, betas=tuple(t_cfg.adam_betas),
                                  weight_decay=t_cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=t_cfg.precision == "fp16")
    step, best = 0, math.inf
    if state is not None:
        load_weights(model, state["model"], str(ckpt_path))
        load_weights(ema.model, state["ema"]["model"], f"{ckpt_path} (EMA)")
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step, best = int(state["step"]), float(state.get("best", math.inf))
        del state  # its tensors are now in the model, the EMA and the optimizer
    replicated = distributed.wrap(model, device)  # DDP under torchrun: gradients averaged over the processes
    network = torch.compile(replicated, mode=t_cfg.compile_mode) if t_cfg.compile else replicated
    training_fd = (TrainingFD(cfg, (spec.image_channels, spec.image_size, spec.image_size), data.class_names)
                   if t_cfg.fd_every else None)

    if main:
        write_json(run_dir / "config.json", cfg.to_dict())
    log = RunLog(run_dir / "log.jsonl", resume_step=step) if main else _Silent()
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None) if main else _Silent()
    if main:
        start_session(writer, cfg)  # the HParams tab: the config, and the last value of each scalar
    monitor = ResourceMonitor(device)
    num_params = sum(p.numel() for p in model.parameters())
    plural = "es" if split.world_size > 1 else ""
    processes = (f", {split.world_size} process{plural} x {split.grad_accum} micro-batches of {split.micro_batch}"
                 if split.world_size > 1 or split.grad_accum > 1 else "")
    if main:
        print(f"ddpmkit: {cfg.data.dataset} ({len(data)} images from {data.source}), U-Net {num_params / 1e6:.2f}M "
              f"parameters, {device}, {t_cfg.precision}, batch {t_cfg.batch_size}{processes}; run dir {run_dir}"
              + (f", resuming at step {step}" if step else ""))

    def training_state() -> dict:
        """What a run resumes from: nothing in it depends on the number of processes or the kind of device."""
        return {
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "step": step, "best": best,
            "config": cfg.to_dict(), "unet": vars(spec).copy(), "class_names": data.class_names,
        }

    def check_replicas() -> None:
        """Every process must hold the same weights and EMA; a difference means a bug, so stop and say where."""
        differs = distributed.first_difference({"model": model, "ema": ema.model})
        if differs:
            raise DdpmkitError(f"the processes' copies of the model diverged at step {step} ({differs} differs from "
                               f"rank 0); please report this. {saved or 'no checkpoint'} holds the last good state")
        if split.world_size > 1:
            log.write({"step": step, "replicas_identical": split.world_size})

    # -- the loop ----------------------------------------------------------------------------------------------------
    accum = t_cfg.grad_accum
    order = BatchOrder(len(data), t_cfg.batch_size, t_cfg.seed)
    stop = min(t_cfg.steps, stop_at if stop_at is not None else t_cfg.steps)
    batches = batch_stream(data, order, split, rank, step, stop, device, cfg.data.num_workers, t_cfg.seed)
    T = schedule.num_timesteps
    image_shape = (spec.image_channels, spec.image_size, spec.image_size)
    label_dropout = cfg.diffusion.label_dropout if spec.num_classes else None
    loss_options = objective(cfg.diffusion)
    null_label = spec.num_classes
    noise_gen = torch.Generator(device=device)  # reseeded every step from (seed, step): see global_batch.py
    guard = NonFiniteGuard(device, t_cfg.max_nonfinite_steps)
    vote = distributed.StopVote()
    loss_sum = torch.zeros((), device=device)  # summed on the device; read back only every log_every steps
    interval_start, interval_steps = time.perf_counter(), 0
    saved_step, saved = step, ckpt_path  # the newest checkpoint on disk
    bar = tqdm(total=t_cfg.steps, initial=step, desc="train", unit="step", disable=not (progress and main),
               dynamic_ncols=True)
    model.train()
    with GracefulStop(announce=main) as interrupt:
        try:
            while step < stop:
                lr = learning_rate(step, t_cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.model.dropout:  # dropout masks: this process's own, seeded by (seed, step, rank)
                    torch.manual_seed(step_seed(t_cfg.seed, step, f"dropout/{rank}"))
                drawn = StepRandomness.draw(noise_gen, t_cfg.seed, step, t_cfg.batch_size, image_shape, T,
                                            cfg.data.hflip, label_dropout)
                step_loss = torch.zeros((), device=device)
                for micro in range(accum):
                    images, labels = next(batches)
                    mine = drawn[split.part(rank, micro)]
                    x0 = to_model_range(images, cfg.data.zero_one)
                    if t_cfg.channels_last:
                        x0 = x0.contiguous(memory_format=torch.channels_last)
                    if mine.flips is not None:
                        x0 = torch.where(mine.flips[:, None, None, None], x0.flip(3), x0)
                    y = drop_labels(labels, mine.drops, null_label) if spec.num_classes else None
                    with distributed.no_sync(replicated, last=micro == accum - 1):
                        with autocast(device, t_cfg.precision):
                            loss = diffusion_loss(network, schedule, x0, mine.t, mine.noise, y, **loss_options)
                        scaler.scale(loss / accum).backward()  # the last micro-batch's all-reduces the gradients
                    step_loss += loss.detach() / accum
                distributed.mean_over_ranks_(step_loss)  # the global batch's loss, the same on every process
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip or math.inf)
                skip = guard.check(step_loss, grad_norm)  # a NaN or inf step changes neither weights nor EMA
                optimizer_step(optimizer, scaler, skip)
                optimizer.zero_grad(set_to_none=True)
                ema.update(model, skip)
                loss_sum += torch.where(skip.bool(), 0.0, step_loss)
                step += 1
                interval_steps += 1
                bar.update(1)

                if step % t_cfg.log_every == 0 or step == stop:
                    elapsed = time.perf_counter() - interval_start
                    skipped = guard.read_interval(step)
                    finite_steps = interval_steps - skipped
                    record = {"step": step, "loss": loss_sum.item() / finite_steps if finite_steps else None,
                              "lr": lr, "grad_norm": float(grad_norm), "skipped_steps": skipped,
                              "images_per_s": interval_steps * t_cfg.batch_size / elapsed}
                    resources = monitor.read()
                    log.write({**record, **resources})
                    for key in ("loss", "lr", "grad_norm", "images_per_s", "skipped_steps"):
                        if record[key] is not None:
                            writer.add_scalar(f"train/{key}", record[key], step)
                    for key, value in resources.items():
                        writer.add_scalar(f"resources/{key}", value, step)
                    bar.set_postfix(loss=f"{record['loss'] or math.nan:.4f}", img_s=f"{record['images_per_s']:.0f}",
                                    **({"skipped": skipped} if skipped else {}))
                    loss_sum.zero_()
                    interval_start, interval_steps = time.perf_counter(), 0

                extra_work_start = time.perf_counter()  # evaluation, grids and checkpoints don't count against images/s
                stop_signal = vote(interrupt.signum if interrupt.requested else 0)  # any rank's, agreed by all
                finished = step == t_cfg.steps
                improved = False
                if not stop_signal:  # a stop request saves at once: a scheduler's grace period is short
                    # Evaluations come before the checkpoint, so that the checkpoint's "best" is up to date.
                    if heldout_images is not None and (step % t_cfg.eval_every == 0 or finished):
                        value = heldout_loss(ema.model, schedule, heldout_images, heldout_labels, cfg, device)
                        log.write({"step": step, "heldout_loss": value, "heldout": heldout_source})
                        writer.add_scalar("eval/heldout_loss_ema", value, step)
                        if t_cfg.best_by == "heldout_loss" and value < best:
                            best, improved = value, True
                    if training_fd is not None and (step % t_cfg.fd_every == 0 or finished):
                        value = training_fd(ema.model, schedule, device)
                        log.write({"step": step, training_fd.name: value, "fd_sampler": t_cfg.fd_sampler,
                                   "fd_steps": t_cfg.fd_steps, "fd_samples": t_cfg.fd_samples})
                        writer.add_scalar(f"eval/{training_fd.name}_ema", value, step)
                        if t_cfg.best_by == "fd" and value < best:
                            best, improved = value, True
                    if t_cfg.sample_every and step % t_cfg.sample_every == 0 or finished:
                        grid = sample_images(ema.model, schedule, cfg, device, t_cfg.grid_images, t_cfg.grid_sampler,
                                             t_cfg.grid_steps)
                        if main:
                            save_grid(grid, run_dir / "samples" / f"step_{step:07d}.png")
                        writer.add_images("samples/ema", grid, step)
                if step % t_cfg.checkpoint_every == 0 or step == stop or stop_signal:
                    guard.read_limit(step)  # never save a state that a run of non-finite steps should stop
                    check_replicas()
                    saved, saved_step = periodic_path(run_dir, step), step
                    if main:
                        save_periodic(training_state(), run_dir, t_cfg.keep_checkpoints)
                        if improved:
                            link_checkpoint(saved, run_dir / "best.pt")
                    distributed.barrier()  # no process goes on before the checkpoint it may resume from exists
                elif improved and main:
                    save_checkpoint(training_state(), run_dir / "best.pt")
                if stop_signal:
                    raise StopRequested(stop_signal)
                interval_start += time.perf_counter() - extra_work_start
        except NonFiniteLoss as fault:
            bar.close()
            kept = f"{saved} (step {saved_step}) is from before the fault" if saved else "no checkpoint was written"
            raise DdpmkitError(f"training stopped: {fault}. {kept}; after fixing the cause, run the same command "
                               f"again to resume") from None
        except KeyboardInterrupt:
            bar.close()
            if main:
                where = (f"saved {run_dir / 'latest.pt'} at step {step}" if saved_step == step else
                         f"{saved} (step {saved_step}) holds the last checkpoint" if saved else "no checkpoint yet")
                print(f"\ninterrupted: {where}; run the same command again to resume", file=sys.stderr)
            raise
        finally:
            vote.close()
            bar.close()
            if main and step == t_cfg.steps:
                end_session(writer)  # the HParams tab: finished
            writer.close()
            log.close()
            if main:
                with contextlib.suppress(OSError):  # a full disk must not hide why the run stopped behind a plot error
                    plot_loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")

    if step < t_cfg.steps:
        return run_dir / "latest.pt"
    final = run_dir / "final.pt"
    if main:
        link_checkpoint(saved, final)
    distributed.barrier()
    return final
