"""The diffusers side of the race (benchmarks/race.py): diffusers' own ``train_unconditional`` example, scaled down.

What a user of diffusers writes to train a small image model: ``UNet2DModel`` + ``DDPMScheduler`` + AdamW + cosine
learning rate with warm-up + ``EMAModel``, the loop of ``examples/unconditional_image_generation/
train_unconditional.py``. Every choice, and why:

- network: the example's UNet2DModel shape (ResNet down and up blocks, an attention middle block) at the width
  that fits 2 CPU cores: block_out_channels (32, 64, 64), one layer per block, no attention blocks besides the
  middle one; 1.06M parameters, the script issue #13 measured. (The example's (128, 128, 256, 256, 512, 512) has
  113M parameters and would not finish 200 steps in 10 minutes here.)
- noise: DDPMScheduler(1000 steps, linear betas 1e-4..0.02, epsilon prediction), the example's defaults; timesteps
  uniform over 0..999, loss MSE on the noise, as in the example.
- optimiser: AdamW with the example's betas (0.95, 0.999), weight decay 1e-6, eps 1e-8, gradient clipping at 1.0.
- learning rate: 1e-3 (the example's 1e-4 is for batch 16 and many epochs; at batch 128 and a few hundred steps it
  barely moves the network, so the baseline gets the larger rate issue #13's script used), the example's cosine
  schedule and warm-up, the warm-up scaled from its 500 steps to 10% of the steps the budget allows.
- EMA: diffusers' EMAModel with the example's settings (max decay 0.9999, warm-up inv_gamma 1.0, power 3/4).
- batch 128 (the example's 16 wastes the CPU's throughput on a net this small), fp32, no flips (clothes and digits
  are not mirror-symmetric), channels_last as ddpmkit's CPU presets use (the same memory format on both sides).
- data: exactly the images ddpmkit trains on (data.load_images: Fashion-MNIST padded from 28 to 32 pixels), in
  [-1, 1], reshuffled every epoch from the seed.

The second, stronger baseline (``same_size_settings``, issue #25) is the same loop with ddpmkit's network shape
instead: UNet2DModel at the width, depth, normalisation and batch of a ddpmkit preset (for the CPU presets block
widths (16, 32, 64), one layer per block, GroupNorm(8), no attention anywhere, batch 32: 619,697 parameters, exactly
as many as ddpmkit's U-Net of that preset) and the preset's tuned learning rate and warm-up, so that what is left
between it and ddpmkit's row is the objective and the training recipe, not the architecture.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

SETTINGS = {  # the choices above, recorded in the race's JSON
    "block_out_channels": (32, 64, 64), "layers_per_block": 1, "batch_size": 128, "lr": 1e-3,
    "adam_betas": (0.95, 0.999), "weight_decay": 1e-6, "adam_eps": 1e-8, "grad_clip": 1.0,
    "warmup_fraction": 0.1, "warmup_max": 500, "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75,
    "num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon",
}




def same_size_settings(cfg) -> dict:
    """The example's loop with the network and batch of the ddpmkit config ``cfg`` (an attention-free U-Net: the
    CPU presets'), its learning rate and warm-up steps."""
    m = cfg.model
    if m.attention_resolutions or m.num_res_blocks < 1:
        raise ValueError("same_size_settings mirrors attention-free ddpmkit U-Nets only (the CPU presets')")
    return {**SETTINGS, "block_out_channels": tuple(m.base_channels * k for k in m.channel_mults),
            "layers_per_block": m.num_res_blocks, "norm_num_groups": m.norm_groups,
            "middle_attention": m.middle_attention, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
            "warmup_steps": cfg.train.warmup_steps}


def build_unet(image_channels: int, image_size: int, settings: dict = SETTINGS):
    from diffusers import UNet2DModel

    levels = len(settings["block_out_channels"])
    return UNet2DModel(sample_size=image_size, in_channels=image_channels, out_channels=image_channels,
                       block_out_channels=settings["block_out_channels"], layers_per_block=settings["layers_per_block"],
                       down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                       norm_num_groups=settings.get("norm_num_groups", 32),
                       add_attention=settings.get("middle_attention", True))


class Trainer:
    """One training run of the baseline: ``step()`` is one optimizer step of the example's loop."""

    def __init__(self, images: torch.Tensor, total_steps: int, seed: int, settings: dict = SETTINGS):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        s = self.settings = settings
        torch.manual_seed(seed)
        self.images = images  # uint8 (N, C, H, W)
        self.unet = build_unet(images.shape[1], images.shape[-1], s).to(memory_format=torch.channels_last)
        self.scheduler = DDPMScheduler(num_train_timesteps=s["num_train_timesteps"], beta_schedule=s["beta_schedule"],
                                       prediction_type=s["prediction_type"])
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=s["lr"], betas=s["adam_betas"],
                                           weight_decay=s["weight_decay"], eps=s["adam_eps"])
        warmup = s.get("warmup_steps") or min(s["warmup_max"], max(1, round(s["warmup_fraction"] * total_steps)))
        self.lr_scheduler = get_scheduler("cosine", optimizer=self.optimizer, num_warmup_steps=warmup,
                                          num_training_steps=total_steps)
        self.ema = EMAModel(self.unet.parameters(), decay=s["ema_max_decay"], use_ema_warmup=True,
                            inv_gamma=s["ema_inv_gamma"], power=s["ema_power"])
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position, self.warmup = torch.empty(0, dtype=torch.long), 0, warmup

    def next_batch(self) -> torch.Tensor:
        batch = self.settings["batch_size"]
        if self.position + batch > len(self.order):  # a new epoch (the last incomplete batch dropped)
            self.order, self.position = torch.randperm(len(self.images), generator=self.generator), 0
        index = self.order[self.position: self.position + batch]
        self.position += batch
        return (self.images[index].float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)

    def step(self) -> float:
        clean = self.next_batch()
        noise = torch.randn(clean.shape, generator=self.generator).contiguous(memory_format=torch.channels_last)
        timesteps = torch.randint(0, self.settings["num_train_timesteps"], (len(clean),), generator=self.generator)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(self.unet(noisy, timesteps).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.settings["grad_clip"])
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        return float(loss.detach())

    def ema_unet(self):
        """The network with the EMA weights, for sampling (the example's ``ema_model.copy_to``)."""
        self.ema.copy_to(self.unet.parameters())
        return self.unet.eval()


def calibration(images: torch.Tensor, settings: dict = SETTINGS, warmup: int = 10, timed: int = 40
                ) -> tuple[float, float]:
    """Optimizer steps per second of a throw-away baseline on this machine now, and the seconds of a run that are
    not steps (building the network, optimizer and EMA); the race sizes runs with them."""
    start = time.perf_counter()
    trainer = Trainer(images, total_steps=warmup + timed, seed=12345, settings=settings)
    overhead = time.perf_counter() - start
    for _ in range(warmup):
        trainer.step()
    start = time.perf_counter()
    for _ in range(timed):
        trainer.step()
    return timed / (time.perf_counter() - start), overhead


def train(images: torch.Tensor, steps: int, seed: int, out_dir: Path, time_limit_s: float = math.inf,
          progress: bool = True, settings: dict = SETTINGS) -> dict:
    """Train the baseline for ``steps`` steps, or until ``time_limit_s`` has passed; saves the EMA network with
    ``save_pretrained`` (safetensors) in ``out_dir/unet`` and returns what happened."""
    start = time.perf_counter()
    trainer = Trainer(images, steps, seed, settings)
    losses = []
    for _ in tqdm(range(steps), desc="diffusers", unit="step", disable=not progress, dynamic_ncols=True):
        if time.perf_counter() - start > time_limit_s:
            break
        losses.append(trainer.step())
    seconds = time.perf_counter() - start
    unet = trainer.ema_unet()
    tmp = out_dir / "unet.tmp"
    unet.save_pretrained(tmp)
    tmp.replace(out_dir / "unet")
    info = {"steps": len(losses), "planned_steps": steps, "train_seconds": round(seconds, 1),
            "images_seen": len(losses) * settings["batch_size"],
            "warmup_steps": trainer.warmup, "final_loss_100": sum(losses[-100:]) / len(losses[-100:]),
            "parameters": sum(p.numel() for p in unet.parameters())}
    (out_dir / "info.json").write_text(json.dumps(info, indent=1))
    return info


def load_ema_unet(out_dir: Path):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(out_dir / "unet", low_cpu_mem_usage=False).eval()
