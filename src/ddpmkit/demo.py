"""``ddpmkit demo``: a web page to draw samples from a trained model, a thin layer over DiffusionSampler.

Generate: choose classes (conditional models), the guidance weight, the sampler, its steps, the seed and the number
of images; the page shows the grid and the denoising animation and offers every image as a PNG. Edit (demo_edit.py):
paint over part of an image to inpaint it, or turn the whole image towards a class (SDEdit). It is served by Gradio
(``pip install 'ddpmkit[demo]'``), on localhost unless told otherwise.

``draw`` does the work and knows nothing of the page; ``build_page`` lays the page out; ``serve`` starts it.
Each request draws into a folder of its own, deleted at the next request (Gradio has copied the files into its
cache by then, and deletes those copies after one to two hours and when the demo stops); the folders' parent goes
when it stops (Ctrl-C or SIGTERM).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from .build import steps_taken
from .config import INT64, default_sampler, samplers_of
from .errors import DdpmkitError
from .pictures import record_denoising
from .sampling import DiffusionSampler
from .stop_signals import StopOnSignal
from .viz import labelled_grid, save_gif, save_pil, save_png, to_pil, upscale

MAX_IMAGES = 64  # per request, so that one visitor cannot occupy the machine for long
FRAMES = 24      # frames of the denoising animation
MAX_SEED = INT64 - 1  # seeds fit an int64, as on the command line and in the config
MAX_PAGE_SEED = 2**53 - 16  # a browser's numbers are doubles: whole ones are exact up to 2**53 (16 images per class)
CACHE_HOURS = 1  # Gradio checks its copies this often and deletes those older (and all when the demo stops)


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
    unknown = [c for c in classes if c not in sampler.class_names] if sampler.is_conditional else []
    if unknown:
        raise DdpmkitError(f"unknown class {unknown[0]!r}; this model's classes are {', '.join(sampler.class_names)}")
    # By name, not through parse_classes: a name may hold a comma ("a, b"), which a class list splits at.
    rows = [sampler.class_names.index(c) for c in classes] if sampler.is_conditional else [None]
    if per_class < 1:
        raise DdpmkitError(f"ask for at least one image, got {per_class}")
    if per_class * len(rows) > MAX_IMAGES:
        raise DdpmkitError(f"{per_class * len(rows)} images asked for; the demo draws at most {MAX_IMAGES} at once")
    check_seed(seed, per_class)
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


def check_seed(seed: int, count: int) -> None:
    """Seeds seed .. seed + count - 1 must fit an int64, as on the command line and in the config."""
    if not 0 <= seed <= MAX_SEED - count + 1:
        raise DdpmkitError(f"the seed must be a whole number from 0 to {MAX_SEED - count + 1}, got {seed}")


def number(value, what: str) -> float:
    """A request's number, or a one-line DdpmkitError (a cleared box arrives as None)."""
    if value is None:
        raise DdpmkitError(f"fill in the {what}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DdpmkitError(f"the {what} must be a number, got {value!r}") from None


def whole_number(value, what: str) -> int:
    if isinstance(value, int):
        return value
    value = number(value, what)
    if not value.is_integer():
        raise DdpmkitError(f"the {what} must be a whole number, got {value:g}")
    return int(value)


def build_page(sampler: DiffusionSampler, name: str, out_root: Path):
    """The Gradio page for ``sampler``; each request writes into its own folder under ``out_root``, and deletes
    the earlier ones (requests run one at a time: they share one Gradio queue, "model")."""
    from .demo_edit import edit_tab  # here, not above: it uses this module's helpers

    gr = _gradio()
    T = sampler.schedule.num_timesteps
    conditional = sampler.is_conditional
    counter = iter(range(10**9))

    def generate(classes, guidance, sampler_name, steps, seed, count):
        for earlier in out_root.glob("request_*"):
            shutil.rmtree(earlier, ignore_errors=True)
        try:
            drawn = draw(sampler, out_root / f"request_{next(counter):06d}", list(classes or []),
                         whole_number(count, "number of images"), number(guidance, "guidance weight"), sampler_name,
                         whole_number(steps, "steps"), whole_number(seed, "seed"))
        except DdpmkitError as err:
            raise gr.Error(str(err)) from None
        return str(drawn.grid), str(drawn.animation), [str(p) for p in drawn.images]

    cache = CACHE_HOURS * 3600
    with gr.Blocks(title=f"ddpmkit: {name}", delete_cache=(cache, cache)) as page:
        kind = "class-conditional" if conditional else "unconditional"
        gr.Markdown(f"## ddpmkit demo\n`{name}`: {kind}, {sampler.image_shape[1]}x{sampler.image_shape[2]}, "
                    f"{sum(p.numel() for p in sampler.model.parameters()) / 1e6:.2f}M parameters, "
                    f"trained {sampler.step:,} steps")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    classes = gr.CheckboxGroup(sampler.class_names, value=sampler.class_names[:4], label="classes",
                                               visible=conditional, elem_id="classes")
                    top = sampler.config.distill.max_guidance if sampler.model.spec.guidance_input else 10.0
                    guidance = gr.Slider(0, top, value=min(1.0, top), step=0.5 if top >= 2 else 0.1,
                                         label="guidance weight w (classifier-free)", visible=conditional,
                                         elem_id="guidance")
                    default = default_sampler(sampler.family)
                    sampler_name = gr.Dropdown(list(samplers_of(sampler.family)), value=default, label="sampler",
                                               elem_id="sampler")
                    # A progressive student takes its own steps only; a consistency student any, a few at most being
                    # what it is for (up to the grid it was distilled on).
                    d = sampler.config.distill
                    fixed = d.method == "progressive"
                    most = d.teacher_steps if d.method == "consistency" else T
                    steps = gr.Slider(1, most, value=min(steps_taken(sampler.config, default, None), most), step=1,
                                      label="steps (the student's own)" if fixed else "steps", elem_id="steps",
                                      interactive=not fixed)
                    seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_PAGE_SEED,
                                     label="seed (image j starts from seed + j)", elem_id="seed")
                    count = gr.Slider(1, 16, value=4, step=1, label="images per class" if conditional else "images",
                                      elem_id="count")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    grid = gr.Image(label="samples", type="filepath", elem_id="grid")
                    animation = gr.Image(label="denoising, from noise to the samples", type="filepath",
                                         elem_id="animation")
                    files = gr.File(label="the images as PNGs", file_count="multiple", elem_id="files")
            button.click(generate, inputs=[classes, guidance, sampler_name, steps, seed, count],
                         outputs=[grid, animation, files], concurrency_id="model")
        if sampler.family != "student":  # editing runs the ODE over many steps, which a student does not learn
            with gr.Tab("Edit"):
                edit_tab(gr, sampler)
    return page


@dataclass
class RunningDemo:
    """A demo served without blocking (``serve(..., block=False)``); ``close`` stops it and deletes its files."""
    page: object     # the gradio.Blocks
    url: str
    out_root: Path   # the request folders' parent

    def close(self) -> None:
        try:
            self.page.close(verbose=False)
        finally:
            shutil.rmtree(self.out_root, ignore_errors=True)


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          block: bool = True, progress: bool = True) -> RunningDemo:
    """Load ``checkpoint`` and serve its page at http://host:port until Ctrl-C; returns the running demo at once
    when ``block`` is False (``close()`` stops it)."""
    _gradio()  # before loading a model: a missing extra says so at once
    check_address(host, port)  # before loading a model, too: Gradio hides why it cannot listen
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo on a closed network
    # The bar goes when the demo is up (leave=False): what stays is the line with its address, or one error line.
    stages = tqdm(total=4, desc="ddpmkit demo: starting", unit="stage", disable=not progress, dynamic_ncols=True,
                  leave=False)
    out_root = None
    try:
        stages.set_postfix_str(f"loading {checkpoint}")
        sampler = DiffusionSampler(checkpoint, device=device)
        out_root = Path(tempfile.mkdtemp(prefix="ddpmkit-demo-"))
        stages.update()
        stages.set_postfix_str("a first image")  # the first visitor does not wait for the warm-up
        warm_up = [sampler.class_names[0]] if sampler.is_conditional else []
        draw(sampler, out_root / "warm_up", warm_up, 1, 0.0, default_sampler(sampler.family), 1, 0)
        shutil.rmtree(out_root / "warm_up")
        stages.update()
        stages.set_postfix_str("building the page")
        page = build_page(sampler, str(checkpoint), out_root)
        stages.update()
        stages.set_postfix_str(f"starting the server on {host}:{port}")
        try:
            page.launch(server_name=host, server_port=port, quiet=True, prevent_thread_lock=True,
                        allowed_paths=[str(out_root)], show_error=True)  # Gradio's own input checks, said
        except OSError as err:
            raise DdpmkitError(f"cannot serve on {host}:{port} ({err}); choose another --port or --host") from None
        stages.update()
    except BaseException:
        if out_root is not None:
            shutil.rmtree(out_root, ignore_errors=True)
        raise
    finally:
        stages.close()
    running = RunningDemo(page, f"http://{host}:{page.server_port}", out_root)
    print(f"ddpmkit demo: serving {checkpoint} at {running.url} (Ctrl-C stops)", flush=True)
    if not block:
        return running
    with StopOnSignal():  # Ctrl-C, and SIGTERM (docker stop, systemd): close, delete the files, exit 130 / 143
        try:
            while True:
                time.sleep(0.2)
        finally:
            running.close()


def check_address(host: str, port: int) -> None:
    """A one-line DdpmkitError if nothing can listen on ``host``:``port`` here (a busy port, an address of another
    machine, a name that does not resolve, a port below 1024 without root)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise DdpmkitError(f"--host {host!r} is not an address or a name this machine can resolve; use 127.0.0.1 "
                           f"(this machine only) or 0.0.0.0 (every network)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a closed demo's
        try:                                                          # lingering connections do not count
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise DdpmkitError(f"port {port} on {host} is in use (another demo?); choose another --port") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise DdpmkitError(f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine "
                                   f"only) or 0.0.0.0 (every network)") from None
            if err.errno == errno.EACCES:
                raise DdpmkitError(f"port {port} needs administrator rights here; choose a --port from 1024 "
                                   f"up") from None
            raise DdpmkitError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --host or "
                               f"--port") from None


def _gradio():
    try:
        import gradio
    except ImportError:
        raise DdpmkitError("the demo needs Gradio: pip install 'ddpmkit[demo]'") from None
    return gradio
