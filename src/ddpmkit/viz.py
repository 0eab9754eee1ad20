"""Pictures a person looks at: grids (optionally labelled), individual PNGs plus an .npz, GIFs, loss and schedule
plots."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid, save_image

from .data import to_uint8
from .errors import DdpmkitError
from .files import atomic_write
from .run_log import read_records


def grid_rows(n: int) -> int:
    """Images per row for a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save float images in [0, 1], (N, C, H, W), as one grid PNG."""
    with atomic_write(path) as f:
        save_image(images, f, format="PNG", nrow=nrow or grid_rows(len(images)), padding=2, pad_value=1.0)
    return Path(path)


def write_npz(images: torch.Tensor, path: str | Path, seeds: list[int], labels: list[int] | None = None,
              class_names: list[str] | None = None, resize_mode: str | None = None) -> Path:
    """``arr_0`` (uint8, N x H x W x C, as the guided-diffusion / TTUR evaluation tools read it), ``seeds`` and, when
    given, ``labels``, the model's ``class_names`` (what the labels mean) and ``resize_mode`` (how its training
    images reached their size); ``ddpmkit evaluate --samples`` reads it back and checks its judge against them."""
    recorded = {"labels": labels, "class_names": class_names or None, "resize_mode": resize_mode}
    extra = {key: np.asarray(value) for key, value in recorded.items() if value is not None}
    uint8 = to_uint8(images, zero_one=True).permute(0, 2, 3, 1).cpu().numpy()
    with atomic_write(path) as f:
        np.savez_compressed(f, arr_0=uint8, seeds=np.asarray(seeds), **extra)
    return Path(path)


def save_pil(image: Image.Image, path: str | Path, **options) -> Path:
    """``image.save(path, **options)``, atomically; the format follows the file name (.png, .gif, .jpg, ...)."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise DdpmkitError(f"{path}: unknown picture format {path.suffix!r}; use a .png (or .gif, .jpg) name")
    with atomic_write(path) as f:
        image.save(f, format=image_format, **options)
    return path


def new_figure(**options):
    """A matplotlib Figure drawn by the Agg renderer, made without pyplot: pyplot's global backend (a notebook's
    inline one, a desktop window) stays as the user set it, and nothing waits in pyplot's list of open figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**options)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically (the format follows the file name)."""
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """One float (C, H, W) image in [0, 1] as a PNG of its own channel count: mode L for 1 channel, RGB for 3."""
    with atomic_write(path) as f:
        pil_image(image).save(f, format="PNG")
    return Path(path)


def write_samples(images: torch.Tensor, output_dir: str | Path, seeds: list[int] | None = None,
                  labels: list[int] | None = None, nrow: int | None = None,
                  row_labels: list[str] | None = None, **recorded) -> dict[str, Path]:
    """Write ``grid.png`` (rows labelled when ``row_labels`` is given), ``images/seed_XXXXX.png`` per image in its own
    channel count (with the class index, ``class_C_seed_XXXXX.png``, when labelled) and ``samples.npz`` (uint8,
    N x H x W x C, key ``arr_0`` as in the guided-diffusion / TTUR evaluation tools; ``seeds``, ``labels`` and
    ``recorded``, write_npz's class_names and resize_mode, beside it)."""
    out = Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    seeds = seeds if seeds is not None else list(range(len(images)))
    for i, (image, seed) in enumerate(zip(images, seeds)):
        prefix = f"class_{labels[i]}_" if labels is not None else ""
        save_png(image, out / "images" / f"{prefix}seed_{seed:05d}.png")
    write_npz(images, out / "samples.npz", seeds, labels, **recorded)
    nrow = nrow or grid_rows(len(images))
    grid = save_labelled_grid(images, out / "grid.png", nrow, row_labels) if row_labels else \
        save_grid(images, out / "grid.png", nrow)
    return {"grid": grid, "npz": out / "samples.npz", "images": out / "images"}


def plot_loss_curve(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot training loss (and held-out EMA loss when logged) against step from a run's ``log.jsonl``."""
    records = read_records(log_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    heldout = [(r["step"], r["heldout_loss"]) for r in records if "heldout_loss" in r]
    if not train:
        return None
    fig = new_figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(*zip(*train), label="training loss (mean over the log interval)")
    if heldout:
        ax.plot(*zip(*heldout), "o-", label="held-out loss, EMA weights")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, out_path)


def pil_image(image: torch.Tensor) -> Image.Image:
    """A float (C, H, W) image in [0, 1] -> PIL, mode L for 1 channel and RGB for 3."""
    array = to_uint8(image, zero_one=True).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def to_pil(grid: torch.Tensor) -> Image.Image:
    """A float (C, H, W) image in [0, 1] -> PIL RGB."""
    return pil_image(grid).convert("RGB")


def upscale(image: Image.Image, rows: int, min_row_height: int = 64) -> Image.Image:
    """Nearest-neighbour enlarge small images (28-32 px) so that labels next to them stay readable."""
    scale = max(1, math.ceil(min_row_height * rows / max(1, image.height)))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def labelled_grid(images: torch.Tensor, nrow: int, row_labels: list[str] | None = None,
                  col_labels: list[str] | None = None) -> Image.Image:
    """A grid of float images in [0, 1] with optional text labels left of each row and above each column."""
    rows = math.ceil(len(images) / nrow)
    grid = upscale(to_pil(make_grid(images, nrow=nrow, padding=2, pad_value=1.0)), rows)
    font = ImageFont.load_default()
    left = 8 + max((int(font.getlength(label)) for label in row_labels), default=0) if row_labels else 0
    top = 16 if col_labels else 0
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    row_height, col_width = grid.height / rows, grid.width / nrow
    for i, label in enumerate(row_labels or []):
        draw.text((4, top + (i + 0.5) * row_height), label, fill="black", font=font, anchor="lm")
    for j, label in enumerate(col_labels or []):
        draw.text((left + (j + 0.5) * col_width, 8), label, fill="black", font=font, anchor="mm")
    return canvas


def save_labelled_grid(images: torch.Tensor, path: str | Path, nrow: int, row_labels: list[str] | None = None,
                       col_labels: list[str] | None = None) -> Path:
    return save_pil(labelled_grid(images, nrow, row_labels, col_labels), path)


def stack_rows(images: list[Image.Image]) -> Image.Image:
    """Stack same-width PIL images vertically (e.g. one animation row per class)."""
    canvas = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), "white")
    top = 0
    for im in images:
        canvas.paste(im, (0, top))
        top += im.height
    return canvas


def save_gif(frames: list[Image.Image], path: str | Path, duration: float = 4.0, hold_last: float = 1.0) -> Path:
    """An endlessly looping GIF: ``frames`` spread over ``duration`` seconds, the last one held ``hold_last`` more."""
    per_frame = max(20, round(1000 * duration / len(frames)))  # ms; browsers clamp shorter frames
    durations = [per_frame] * (len(frames) - 1) + [per_frame + round(1000 * hold_last)]
    return save_pil(frames[0], path, save_all=True, append_images=frames[1:], duration=durations, loop=0)


def plot_noise_schedules(out_path: str | Path, num_timesteps: int = 1000) -> Path:
    """alpha-bar_t and log SNR(t) against t for the linear and cosine schedules (cf. IDDPM figure 5)."""
    from .build import noise_schedule
    from .config import DiffusionConfig

    fig = new_figure(figsize=(10, 4), dpi=120)
    ax1, ax2 = fig.subplots(1, 2)
    t = np.arange(num_timesteps)
    for name, label in (("linear", "linear (DDPM)"), ("cosine", "cosine (IDDPM)")):
        abar = noise_schedule(DiffusionConfig(num_timesteps=num_timesteps, beta_schedule=name)).alphas_cumprod_float64
        abar = abar.numpy()
        ax1.plot(t, abar, label=label)
        ax2.plot(t, np.log(abar / (1 - abar)), label=label)
    ax1.set(xlabel="t", ylabel="alpha-bar_t", title="signal kept: alpha-bar_t")
    ax2.set(xlabel="t", ylabel="log SNR = log(alpha-bar / (1 - alpha-bar))", title="log signal-to-noise ratio")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save_figure(fig, out_path)
