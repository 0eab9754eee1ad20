"""What a training run resumes from: the network, its EMA, the optimizer, the step, the learning-rate curve, the best
value so far and the held-out decision, as one object that becomes a checkpoint dict and is rebuilt from one.

Nothing in it depends on the number of processes or the kind of device, so a run resumes anywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checkpoint import load_weights
from .config import Config, config_from_dict, resolve_sampler, sampler_family
from .ema import EMA, decay_for_halflife
from .lr_schedule import LearningRate
from .unet import UNet, UNetSpec


def best_settings(cfg: Config) -> dict:
    """What a 'best' value is measured under: FD's bias depends on its sample count, sampler and judge."""
    t = cfg.train
    if t.best_by == "fd":
        layout = {"fd_classes": FD_CLASS_LAYOUT} if cfg.model.class_conditional else {}
        return {"best_by": "fd", "fd_samples": t.fd_samples, "fd_sampler": resolve_sampler(sampler_family(cfg),
                t.fd_sampler), "fd_steps": t.fd_steps,
                "fd_classifier": t.fd_classifier or cfg.data.dataset, **layout}
    return {"best_by": t.best_by, "eval_images": t.eval_images}


# How a conditional model's in-training FD samples share out the classes (seeded_sampling.class_blocks); checkpoints
# from before the settings were kept drew class i mod K for image i.
FD_CLASS_LAYOUT = "blocks"


def _legacy_best_settings(saved: Config) -> dict:
    """The settings of a checkpoint from before they were kept: its config's, with that layout."""
    settings = best_settings(saved)
    return {**settings, "fd_classes": "i mod K"} if "fd_classes" in settings else settings


class Best:
    """The lowest value so far of the metric that picks ``best.pt`` (``train.best_by``), with the settings it was
    measured under. A resumed run whose settings differ (say ``fd_samples`` 1,000 -> 5,000) cannot compare its
    values with the old best, so it starts the comparison afresh and says so."""

    def __init__(self, settings: dict):
        self.value, self.settings = math.inf, settings

    def offer(self, value: float) -> bool:
        """Take ``value`` if it beats the best so far; True when it did."""
        if value < self.value:
            self.value = value
            return True
        return False

    def resume(self, value: float, settings: dict) -> str | None:
        """Continue from a checkpoint's best; returns a message when it was measured under other settings."""
        if settings == self.settings or math.isinf(value):
            self.value = value
            return None
        changed = ", ".join(f"{k} {settings.get(k)!r} -> {v!r}" for k, v in self.settings.items()
                            if settings.get(k) != v)
        return (f"best.pt: its {self.settings['best_by']} of {value:.6g} was measured under other settings "
                f"({changed}); the comparison starts afresh, and best.pt is replaced at the next evaluation")


@dataclass
class TrainingState:
    cfg: Config
    model: UNet
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr: LearningRate
    best: Best
    holds_out: bool          # whether training images were held out for evaluation when the run started
    class_names: list[str]
    step: int = 0

    @classmethod
    def new(cls, cfg: Config, spec: UNetSpec, device: torch.device, holds_out: bool,
            class_names: list[str]) -> "TrainingState":
        t = cfg.train
        model = UNet(spec).to(device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        decay = decay_for_halflife(t.ema_halflife_images, t.batch_size) if t.ema_halflife_images else t.ema_decay
        # Fused AdamW (CPU and CUDA) can skip a non-finite step on the device; see nonfinite.py.
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.adam_betas),
                                      weight_decay=t.weight_decay, fused=device.type in ("cpu", "cuda"))
        scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
        return cls(cfg, model, EMA(model, decay, t.ema_warmup), optimizer, scaler, LearningRate.fresh(t),
                   Best(best_settings(cfg)), holds_out, class_names)

    def load(self, checkpoint: dict, path: str) -> list[str]:
        """Continue from ``checkpoint`` (read from ``path``); returns what the user should be told."""
        saved = config_from_dict(checkpoint["config"], source=f"the config inside {path}")
        load_weights(self.model, checkpoint["model"], path)
        load_weights(self.ema.model, checkpoint["ema"]["model"], f"{path} (EMA)")
        self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        # Checkpoints from before these were kept: what the config inside them says.
        lr = checkpoint.get("lr_schedule") or {"end": saved.train.steps, "decay_start": saved.train.warmup_steps,
                                               "start_factor": 1.0}
        self.lr = LearningRate.from_state(lr, self.cfg.train).resumed(self.step, self.cfg.train)
        note = self.best.resume(float(checkpoint.get("best", math.inf)),
                                checkpoint.get("best_settings") or _legacy_best_settings(saved))
        return [note] if note else []

    def start_from(self, teacher: UNet) -> None:
        """A student's start (distillation): the teacher's weights in the model and its EMA. A guidance-distilled
        student's guidance embedding, which its teacher lacks, keeps its initial weights (its last layer zero: the
        student starts as the teacher for every w)."""
        weights = {**{k: v for k, v in self.model.state_dict().items() if k.startswith("guidance_mlp.")},
                   **teacher.state_dict()}
        load_weights(self.model, weights, "the teacher")
        load_weights(self.ema.model, weights, "the teacher")

    def checkpoint(self) -> dict:
        """The plain dict a checkpoint holds (nanoGPT-style): state_dicts, config, step and run-level decisions."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None, "step": self.step,
            "best": self.best.value, "best_settings": self.best.settings, "lr_schedule": self.lr.state_dict(),
            "holds_out": self.holds_out, "config": self.cfg.to_dict(), "unet": vars(self.model.spec).copy(),
            "class_names": self.class_names,
        }

