"""The training loop: one function you can read top to bottom, its state in plain sight.

A run directory holds ``config.json`` (the resolved config), ``log.jsonl`` (one record per log interval),
``checkpoints/step_NNNNNNNN.pt`` (the last ``train.keep_checkpoints``) with ``latest.pt`` / ``best.pt`` /
``final.pt`` beside them, ``samples/`` (grids), ``loss.png`` and ``tensorboard/``. Running the same command again in
the same run directory resumes from the newest intact checkpoint. What may go wrong on the way, and what then
happens, is in docs/reliability.md.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from . import distributed
from .build import noise_schedule, run_sampler, set_tf32, unet_spec
from .checkpoint import (link_checkpoint, newest_intact, periodic_path, read_checkpoint, resume_candidates,
                         save_checkpoint, save_periodic)
from .config import Config, check_trainable, config_from_dict, resolve_sampler, sampler_family
from .data import BatchOrder, ImageData, batch_stream, from_model_range, load_images
from .distill.teacher import Teacher, distillation_loss, load_teacher
from .errors import DdpmkitError
from .files import remove_stale_temporaries, write_json
from .global_batch import BatchSplit
from .heldout import HeldOut, RunSplit, heldout_loss, split_for_run
from .nonfinite import NonFiniteLoss
from .seeded_sampling import class_blocks, generate_images
from .stop_signals import GracefulStop, StopRequested
from .train_report import TrainingReport
from .train_state import TrainingState
from .train_step import OptimizerStep
from .unet import UNet
from .viz import save_grid


@torch.no_grad()
def sample_images(model: UNet, schedule, cfg: Config, device: torch.device, num_images: int, sampler: str,
                  steps: int, batch_size: int = 500) -> torch.Tensor:
    """Samples of ``model`` with seeds 0..num_images-1, a conditional model's classes in blocks
    (``seeded_sampling.class_blocks``), in [0, 1] on the CPU: the images ``DiffusionSampler.generate`` draws for
    those seeds and labels. In a distributed run every process gets all the images."""
    spec, sampler = model.spec, resolve_sampler(sampler_family(cfg), sampler)

    def draw(x_T: torch.Tensor, noise, y: torch.Tensor | None) -> torch.Tensor:
        y = y.to(device) if y is not None else None
        x0 = run_sampler(cfg, sampler, lambda x, t: model(x, t, y), schedule, x_T.to(device),
                         steps=None if sampler == "deterministic" else steps, noise=noise, progress=False)
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
        check_compatible(info, class_names, image_shape[-1], image_shape[0], cfg.data.resize_mode,
                         judged="this run's images (train.fd_classifier)")
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
    for section in ("data", "model", "diffusion", "train", "distill"):
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


def _training_state(cfg: Config, device: torch.device, checkpoint: dict | None, ckpt_path: Path | None,
                    teacher: Teacher | None) -> tuple[RunSplit, TrainingState, list[str]]:
    """The run's images, split between training and evaluation, and its state: new (a student: the teacher's
    network and weights), or continued from ``checkpoint``; with what the user should be told about them."""
    with distributed.local_rank_zero_first():  # one download or decoding pass per machine at a time
        run_split = split_for_run(cfg, load_images(cfg.data, "train"), checkpoint)
    data = run_split.train
    if teacher is not None:  # the teacher's network, with a guidance input where the student learns guidance
        spec = dataclasses.replace(teacher.model.spec, guidance_input=cfg.model.guidance_input)
    else:
        spec = unet_spec(cfg, data.channels, data.num_classes)
    state = TrainingState.new(cfg, spec, device, run_split.holds_out, data.class_names)
    notes = [run_split.note] if run_split.note else []
    if checkpoint is not None:
        notes += state.load(checkpoint, str(ckpt_path))
    elif teacher is not None:  # the teacher's weights, or those of the student a round continues
        state.start_from(load_teacher(cfg.distill.start, device).model if cfg.distill.start else teacher.model)
    if cfg.train.batch_size > len(data):
        notes.append(f"train.batch_size={cfg.train.batch_size} is larger than the {len(data)} training images, so "
                     f"every batch holds each image about {cfg.train.batch_size / len(data):.0f} times; lower "
                     f"train.batch_size or train on more images")
    return run_split, state, notes


def _evaluate_and_draw(cfg: Config, state: TrainingState, schedule, device: torch.device, heldout: HeldOut | None,
                       training_fd: TrainingFD | None, report: TrainingReport, run_dir: Path) -> bool:
    """The step's periodic evaluations of the EMA model and its sample grid; True when 'best' improved."""
    t, step = cfg.train, state.step
    finished, improved = step == t.steps, False
    if heldout is not None and (step % t.eval_every == 0 or finished):
        value = heldout_loss(state.ema.model, schedule, heldout.images, heldout.labels, cfg, device)
        report.evaluation(step, "heldout_loss", value, heldout=heldout.source)
        improved |= t.best_by == "heldout_loss" and state.best.offer(value)
    if training_fd is not None and (step % t.fd_every == 0 or finished):
        value = training_fd(state.ema.model, schedule, device)
        report.evaluation(step, training_fd.name, value, fd_sampler=resolve_sampler(sampler_family(cfg),
                          t.fd_sampler), fd_steps=t.fd_steps, fd_samples=t.fd_samples)
        improved |= t.best_by == "fd" and state.best.offer(value)
    if t.sample_every and step % t.sample_every == 0 or finished:
        grid = sample_images(state.ema.model, schedule, cfg, device, t.grid_images, t.grid_sampler, t.grid_steps)
        if report.main:
            save_grid(grid, run_dir / "samples" / f"step_{step:07d}.png")
        report.writer.add_images("samples/ema", grid, step)
    return improved


class _Checkpoints:
    """Writes the periodic checkpoints (rank 0) and knows the newest one on disk, to name after a fault."""

    def __init__(self, cfg: Config, run_dir: Path, report: TrainingReport, world_size: int, saved: Path | None,
                 saved_step: int):
        self.cfg, self.run_dir, self.report, self.world_size = cfg, run_dir, report, world_size
        self.saved, self.saved_step = saved, saved_step

    def after_step(self, state: TrainingState, guard, improved: bool, now: bool) -> None:
        """Every ``checkpoint_every`` steps, or ``now``: check, write and link the step's checkpoint; otherwise a
        better EMA model is written as ``best.pt`` alone."""
        t, main = self.cfg.train, self.report.main
        if state.step % t.checkpoint_every == 0 or now:
            guard.read_limit(state.step)  # never save a state that a run of non-finite steps should stop
            self._check_replicas(state)
            self.saved, self.saved_step = periodic_path(self.run_dir, state.step), state.step
            if main:
                save_periodic(state.checkpoint(), self.run_dir, t.keep_checkpoints)
                if improved:
                    link_checkpoint(self.saved, self.run_dir / "best.pt")
            distributed.barrier()  # no process goes on before the checkpoint it may resume from exists
        elif improved and main:
            save_checkpoint(state.checkpoint(), self.run_dir / "best.pt")

    def _check_replicas(self, state: TrainingState) -> None:
        """Every process must hold the same weights and EMA; a difference means a bug, so stop and say where."""
        differs = distributed.first_difference({"model": state.model, "ema": state.ema.model})
        if differs:
            raise DdpmkitError(f"the processes' copies of the model diverged at step {state.step} ({differs} differs "
                               f"from rank 0); please report this. {self.saved or 'no checkpoint'} holds the last "
                               f"good state")
        if self.world_size > 1:
            self.report.log.write({"step": state.step, "replicas_identical": self.world_size})

    def before_fault(self) -> str:
        return (f"{self.saved} (step {self.saved_step}) is from before the fault" if self.saved else
                "no checkpoint was written")

    def last_kept(self, step: int) -> str:
        """Where an interrupted run's work is, for the message it ends with."""
        if self.saved_step == step:
            return f"saved {self.run_dir / 'latest.pt'} at step {step}"
        return f"{self.saved} (step {self.saved_step}) holds the last checkpoint" if self.saved else "no checkpoint yet"


def _announce(cfg: Config, state: TrainingState, data: ImageData, split: BatchSplit, device: torch.device,
              run_dir: Path, notes: list[str], report: TrainingReport) -> None:
    """The run's first lines (rank 0): what is trained on what, and anything the user should know (also kept in
    log.jsonl, for whoever reads the run later)."""
    if not report.main:
        return
    t = cfg.train
    num_params = sum(p.numel() for p in state.model.parameters())
    plural = "es" if split.world_size > 1 else ""
    processes = (f", {split.world_size} process{plural} x {split.grad_accum} micro-batches of {split.micro_batch}"
                 if split.world_size > 1 or split.grad_accum > 1 else "")
    print(f"ddpmkit: {cfg.data.dataset} ({len(data)} images from {data.source}), U-Net {num_params / 1e6:.2f}M "
          f"parameters, {device}, {t.precision}, batch {t.batch_size}{processes}; run dir {run_dir}"
          + (f", resuming at step {state.step}" if state.step else ""))
    for note in notes:
        report.say(f"note: {note}")
        report.log.write({"step": state.step, "note": note})


def _already_trained(run_dir: Path, step: int, steps: int, ckpt_path: Path, main: bool) -> Path:
    if main:
        print(f"{run_dir}: already trained for {step} steps (train.steps={steps}); nothing to do")
    return run_dir / "final.pt" if (run_dir / "final.pt").is_file() else ckpt_path


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
    t = check_trainable(cfg).train
    if stop_at is not None and stop_at < 1:
        raise DdpmkitError(f"--stop-at must be a step >= 1, got {stop_at}")
    run_dir = Path(run_dir)
    device = distributed.setup(t.device)
    main = distributed.is_main()
    split = BatchSplit(t.batch_size, distributed.world_size(), t.grad_accum)
    set_tf32(device, t.tf32)
    torch.manual_seed(t.seed)  # the initial weights
    checkpoint, ckpt_path = distributed.run_on_main(_prepare_run_dir, run_dir, resume, cfg)  # rank 0 reads it
    if checkpoint is not None and int(checkpoint["step"]) >= t.steps:
        return _already_trained(run_dir, int(checkpoint["step"]), t.steps, ckpt_path, main)

    teacher = load_teacher(cfg.distill.teacher, device) if cfg.distill.method else None
    run_split, state, notes = _training_state(cfg, device, checkpoint, ckpt_path, teacher)
    del checkpoint  # its tensors are now in the model, the EMA and the optimizer
    data, spec = run_split.train, state.model.spec
    replicated = distributed.wrap(state.model, device)  # DDP under torchrun: gradients averaged over the processes
    network = torch.compile(replicated, mode=t.compile_mode) if t.compile else replicated
    schedule = noise_schedule(cfg.diffusion).to(device)
    training_fd = (TrainingFD(cfg, (spec.image_channels, spec.image_size, spec.image_size), data.class_names)
                   if t.fd_every else None)
    if main:
        write_json(run_dir / "config.json", cfg.to_dict())
    report = TrainingReport(cfg, run_dir, state.step, device, main, progress)
    _announce(cfg, state, data, split, device, run_dir, notes, report)
    checkpoints = _Checkpoints(cfg, run_dir, report, split.world_size, ckpt_path, state.step)
    loss = distillation_loss(cfg, teacher, device) if teacher is not None else None
    optimizer_step = OptimizerStep(cfg, state, replicated, network, schedule, split, device, loss)
    stop = min(t.steps, stop_at if stop_at is not None else t.steps)
    batches = batch_stream(data, BatchOrder(len(data), t.batch_size, t.seed), split, distributed.rank(), state.step,
                           stop, device, cfg.data.num_workers, t.seed)
    vote = distributed.StopVote()
    state.model.train()
    with GracefulStop(announce=main) as interrupt:
        try:
            while state.step < stop:
                loss, grad_norm, skip, lr = optimizer_step(batches)
                report.step_done(state.step, loss, skip, lr, grad_norm, optimizer_step.guard, last=state.step == stop)
                with report.not_timed():
                    stop_signal = vote(interrupt.signum if interrupt.requested else 0)  # any rank's, agreed by all
                    # Evaluate before the checkpoint (its 'best'); a stop request saves at once (short grace periods)
                    improved = not stop_signal and _evaluate_and_draw(cfg, state, schedule, device, run_split.heldout,
                                                                      training_fd, report, run_dir)
                    checkpoints.after_step(state, optimizer_step.guard, improved, now=state.step == stop or
                                           bool(stop_signal))
                if stop_signal:
                    raise StopRequested(stop_signal)
        except NonFiniteLoss as fault:
            report.bar.close()
            raise DdpmkitError(f"training stopped: {fault}. {checkpoints.before_fault()}; after fixing the cause, "
                               f"run the same command again to resume") from None
        except KeyboardInterrupt:
            report.bar.close()
            if main:
                print(f"\ninterrupted: {checkpoints.last_kept(state.step)}; run the same command again to resume",
                      file=sys.stderr)
            raise
        finally:
            vote.close()
            report.close(finished=main and state.step == t.steps)
    if state.step < t.steps:
        return run_dir / "latest.pt"
    if main:
        link_checkpoint(checkpoints.saved, run_dir / "final.pt")
    distributed.barrier()
    return run_dir / "final.pt"
