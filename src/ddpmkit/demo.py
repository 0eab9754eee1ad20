"""``ddpmkit demo``: a web page to draw samples from a trained model, a thin layer over DiffusionSampler.

Choose classes (conditional models), the guidance weight, the sampler, its steps, the seed and the number of
images; the page shows the grid and the denoising animation and offers every image as a PNG. It is served by
Gradio (``pip install 'ddpmkit[demo]'``), on localhost unless told otherwise.

``draw`` does the work and knows nothing of the page; ``build_page`` lays the page out; ``serve`` starts it.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid

from .config import DEFAULT_SAMPLER, SAMPLER_NAMES
from .errors import DdpmkitError
from .pictures import record_denoising
from .sampling import DiffusionSampler
from .viz import labelled_grid, save_gif, save_pil, save_png, to_pil, upscale

MAX_IMAGES = 64  # per request, so that one visitor cannot occupy the machine for long
FRAMES = 24      # frames of the denoising animation


@dataclass
class Drawn:
    grid: Path          # all images, one row per class
    animation: Path     # the grid being denoised, from noise to the samples
    images: list[Path]  # one PNG per image


def draw(sampler: DiffusionSampler, out_dir: Path, classes: list[str], per_class: int, guidance: float,
         sampler_name: str, steps: int, seed: int) -> Drawn:
    """``per_class`` images of each of ``classes`` (names; none for an unconditional model) with ``sampler_name``
    at ``steps`` steps; image j of every class starts from seed + j, as ``ddpmkit sample --class`` does."""
    if sampler.is_conditional and not classes:
        raise DdpmkitError("choose at least one class")
    rows = [sampler.class_indices(c)[0] for c in classes] if sampler.is_conditional else [None]
    if per_class * len(rows) > MAX_IMAGES:
        raise DdpmkitError(f"{per_class * len(rows)} images asked for; the demo draws at most {MAX_IMAGES} at once")
    sampler.check_steps(steps)
    seeds = [seed + j for _ in rows for j in range(per_class)]
    labels = torch.tensor([c for c in rows for _ in range(per_class)]) if sampler.is_conditional else None
    xs, _ = record_denoising(sampler, sampler_name, steps, FRAMES, seeds, labels, guidance if labels is not None
                             else 0.0, progress=False)
    images = xs[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    row_labels = [sampler.class_names[c] for c in rows] if sampler.is_conditional else None
    grid = save_pil(labelled_grid(images, nrow=per_class, row_labels=row_labels), out_dir / "grid.png")
    frames = [upscale(to_pil(make_grid(f, nrow=per_class, padding=2, pad_value=1.0)), len(rows), 64) for f in xs]
    animation = save_gif(frames, out_dir / "denoising.gif", duration=3.0, hold_last=1.5)
    names = [f"class_{c}_seed_{s:05d}.png" if c is not None else f"seed_{s:05d}.png"
             for c, s in zip(labels.tolist() if labels is not None else [None] * len(seeds), seeds)]
    pngs = [save_png(image, out_dir / name) for image, name in zip(images, names)]
    return Drawn(grid, animation, pngs)


def build_page(sampler: DiffusionSampler, name: str, out_root: Path):
    """The Gradio page for ``sampler``; each request writes into its own folder under ``out_root``."""
    gr = _gradio()
    T = sampler.schedule.num_timesteps
    conditional = sampler.is_conditional
    counter = iter(range(10**9))

    def generate(classes, guidance, sampler_name, steps, seed, count):
        try:
            drawn = draw(sampler, out_root / f"request_{next(counter):06d}", list(classes or []), int(count),
                         float(guidance), sampler_name, int(steps), int(seed))
        except DdpmkitError as err:
            raise gr.Error(str(err)) from None
        return str(drawn.grid), str(drawn.animation), [str(p) for p in drawn.images]

    with gr.Blocks(title=f"ddpmkit: {name}") as page:
        kind = "class-conditional" if conditional else "unconditional"
        gr.Markdown(f"## ddpmkit demo\n`{name}`: {kind}, {sampler.image_shape[1]}x{sampler.image_shape[2]}, "
                    f"{sum(p.numel() for p in sampler.model.parameters()) / 1e6:.2f}M parameters, "
                    f"trained {sampler.step:,} steps")
        with gr.Row():
            with gr.Column(scale=1):
                classes = gr.CheckboxGroup(sampler.class_names, value=sampler.class_names[:4], label="classes",
                                           visible=conditional, elem_id="classes")
                guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="guidance weight w (classifier-free)",
                                     visible=conditional, elem_id="guidance")
                sampler_name = gr.Dropdown(list(SAMPLER_NAMES), value=DEFAULT_SAMPLER, label="sampler",
                                           elem_id="sampler")
                steps = gr.Slider(1, T, value=min(20, T), step=1, label="steps", elem_id="steps")
                seed = gr.Number(0, precision=0, label="seed (image j starts from seed + j)", elem_id="seed")
                count = gr.Slider(1, 16, value=4, step=1, label="images per class" if conditional else "images",
                                  elem_id="count")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                grid = gr.Image(label="samples", type="filepath", elem_id="grid")
                animation = gr.Image(label="denoising, from noise to the samples", type="filepath",
                                     elem_id="animation")
                files = gr.File(label="the images as PNGs", file_count="multiple", elem_id="files")
        button.click(generate, inputs=[classes, guidance, sampler_name, steps, seed, count],
                     outputs=[grid, animation, files])
    return page


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          block: bool = True):
    """Load ``checkpoint`` and serve its page at http://host:port; returns the running page when ``block`` is
    False (``page.close()`` stops it)."""
    _gradio()  # before loading a model: a missing extra says so at once
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo on a closed network
    print(f"ddpmkit demo: loading {checkpoint} ...", flush=True)
    sampler = DiffusionSampler(checkpoint, device=device)
    out_root = Path(tempfile.mkdtemp(prefix="ddpmkit-demo-"))
    page = build_page(sampler, str(checkpoint), out_root)
    try:
        page.launch(server_name=host, server_port=port, quiet=True, prevent_thread_lock=True,
                    allowed_paths=[str(out_root)])
    except OSError as err:
        raise DdpmkitError(f"cannot serve on {host}:{port} ({err}); choose another --port") from None
    print(f"ddpmkit demo: serving {checkpoint} at http://{host}:{page.server_port} (images go to {out_root}; "
          f"Ctrl-C stops)", flush=True)
    if block:
        try:
            page.block_thread()
        finally:
            page.close()
    return page


def _gradio():
    try:
        import gradio
    except ImportError:
        raise DdpmkitError("the demo needs Gradio: pip install 'ddpmkit[demo]'") from None
    return gradio
