"""The demo's Edit tab: inpainting with a mask painted in the browser, and image-to-image (SDEdit), a thin layer over
``DiffusionSampler.inpaint`` and ``.edit``.

The editor shows the image as the model sees it (its size and channels, each pixel enlarged to a square block so
that a brush can pick pixels out); an uploaded image is converted to that at once. ``editor_image`` and
``painted_mask`` turn the editor's value back into the model's image and the 0/1 mask (painted = generate);
``inpaint_painted`` and ``image_to_image`` do the work and know nothing of the page; ``edit_tab`` lays the tab out.

(No ``from __future__ import annotations`` here: Gradio reads the ``gr.SelectData`` annotation of a handler to pass
it the click, and cannot resolve it from a string.)
"""
import numpy as np
import torch
from PIL import Image

from .data import to_unit_range
from .demo import MAX_PAGE_SEED, check_seed, number, whole_number
from .editing.edits import INPAINT_METHODS, SDEDIT_STEPS, SDEDIT_STRENGTH
from .editing.files import dataset_pictures
from .errors import DdpmkitError
from .sampling import DiffusionSampler
from .viz import pil_image, upscale

EDITOR_SIDE = 256    # the editor shows an image at least this many pixels high, so that a brush can pick pixels out
THUMBNAIL_SIDE = 64  # the test images' thumbnails: less to load, and no file shared with the editor (Gradio rewrites
                     # a cached file whenever the same picture is saved again, and a reader then gets it cut short)
TEST_IMAGES = 8      # test images offered to edit
MAX_COMPLETIONS = 8  # per request, as MAX_IMAGES for the Generate tab
NO_CLASS = -1        # the class picker's "none": the null label, unguided


def enlarged(image: torch.Tensor, side: int = EDITOR_SIDE) -> Image.Image:
    """A (C, H, W) image, uint8 or float in [0, 1] -> PIL at least ``side`` high, each pixel a square block."""
    return upscale(pil_image(to_unit_range(image)), 1, side)


def editor_image(value: dict | None, shape: tuple[int, int, int]) -> torch.Tensor:
    """The editor's background -> the model's (C, H, W) uint8 image: transparency on white, greyscale or RGB as the
    model draws, resized with Pillow (areas averaged when shrinking, which gives back exactly an image that
    ``enlarged`` enlarged)."""
    picture = (value or {}).get("background")
    if picture is None:
        raise DdpmkitError("upload an image or pick a test image first")
    c, h, w = shape
    rgba = picture.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L" if c == 1 else "RGB")
    if flat.size != (w, h):
        flat = flat.resize((w, h), Image.BOX if flat.width >= w and flat.height >= h else Image.BICUBIC)
    return torch.from_numpy(np.asarray(flat).reshape(h, w, c).copy()).permute(2, 0, 1)


def editor_value(image: torch.Tensor) -> dict:
    """A (C, H, W) image as the editor's value, enlarged, with nothing painted (no composite: the page draws it, and
    the same picture twice would be one cached file written twice)."""
    return {"background": enlarged(image), "layers": [], "composite": None}


def as_the_model_sees(value: dict | None, shape: tuple[int, int, int]) -> dict | None:
    """An upload, converted at once (``editor_image``): what one paints on is what the model gets. None when there
    is nothing to change: no image, or one shown as the model sees it already (the editor reports every image it
    loads as an upload, a picked one too, and replacing it would wipe what is painted meanwhile)."""
    if value is None or value.get("background") is None:
        return None
    shown, picture = editor_value(editor_image(value, shape)), value["background"]
    view = shown["background"]
    same = picture.size == view.size and np.array_equal(np.asarray(picture.convert(view.mode)), np.asarray(view))
    return None if same else shown


def painted_mask(value: dict | None, shape: tuple[int, int, int]) -> torch.Tensor:
    """The editor's layers -> the (H, W) mask at the model's size: 1 (generate) where any layer is painted (not
    transparent), resized with nearest."""
    _, h, w = shape
    layers = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in (value or {}).get("layers") or []
              if layer is not None]
    if not layers or not np.logical_or.reduce(layers).any():
        raise DdpmkitError("paint over the part of the image to generate (the brush), then press Inpaint")
    painted = Image.fromarray(np.logical_or.reduce(layers).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    mask = torch.from_numpy(np.asarray(painted) > 127).float()
    if not mask.any():
        raise DdpmkitError(f"the strokes are too thin to cover a pixel of the model's {w}x{h} image; paint wider")
    return mask


def optional_steps(value) -> int | None:
    """The steps box: 0 (or empty) is the method's own count."""
    steps = whole_number(value, "steps") if value is not None else 0
    return steps or None


def _labels(sampler: DiffusionSampler, class_index: int, guidance: float) -> dict:
    """The sampler's labels and guidance for a picked class; none (the null label) is unguided."""
    if class_index == NO_CLASS or not sampler.is_conditional:
        return dict(labels=None, guidance=0.0)
    return dict(labels=class_index, guidance=guidance)  # an index: a name may hold a comma, which a list splits at


def _check_completions(completions: int, seed: int) -> None:
    if not 1 <= completions <= MAX_COMPLETIONS:
        raise DdpmkitError(f"ask for 1 to {MAX_COMPLETIONS} completions, got {completions}")
    check_seed(seed, completions)


def inpaint_painted(sampler: DiffusionSampler, value: dict | None, method: str, class_index: int, guidance: float,
                    completions: int, seed: int, steps: int | None) -> torch.Tensor:
    """``completions`` inpaintings of the editor's image where it is painted: float (completions, C, H, W) in [0, 1];
    completion j starts from seed + j. ``steps`` None: the method's own (editing.edits.INPAINT_METHODS)."""
    _check_completions(completions, seed)
    image, mask = editor_image(value, sampler.image_shape), painted_mask(value, sampler.image_shape)
    return sampler.inpaint(image[None], mask, method=method, completions=completions, seed=seed, steps=steps,
                           progress=False, **_labels(sampler, class_index, guidance))


def image_to_image(sampler: DiffusionSampler, value: dict | None, strength: float, class_index: int,
                   guidance: float, completions: int, seed: int, steps: int | None) -> torch.Tensor:
    """SDEdit of the editor's whole image (the painting is ignored) towards the class: float (completions, C, H, W)
    in [0, 1]. ``steps`` None: editing.edits.SDEDIT_STEPS."""
    _check_completions(completions, seed)
    return sampler.edit(editor_image(value, sampler.image_shape)[None], strength, completions=completions, seed=seed,
                        steps=steps, progress=False, **_labels(sampler, class_index, guidance))


def examples_from_test_split(sampler: DiffusionSampler) -> tuple[torch.Tensor, list[int]] | None:
    """The first TEST_IMAGES of the model's test split (uint8, the model's shape) and their classes (NO_CLASS where
    unknown); None when that data is not on this machine (it is never downloaded): then the tab offers upload only."""
    try:
        images, _, labels = dataset_pictures(sampler, TEST_IMAGES, splits=("test",))
    except DdpmkitError:
        return None
    labels = labels.tolist() if labels is not None else [NO_CLASS] * len(images)
    known = range(len(sampler.class_names)) if sampler.is_conditional else ()
    return images, [label if label in known else NO_CLASS for label in labels]


def edit_tab(gr, sampler: DiffusionSampler) -> None:
    """The Edit tab's controls and events, inside the page's ``gr.Tab``."""
    conditional = sampler.is_conditional
    shape = sampler.image_shape
    tests = examples_from_test_split(sampler)

    def request(work, value, choice, class_index, guidance, completions, seed, steps) -> list:
        """One press of a button: the request's numbers checked, ``work`` done, the results for the gallery; a
        DdpmkitError is said on the page."""
        try:
            seed = whole_number(seed, "seed")
            images = work(sampler, value, choice, whole_number(class_index, "class"), number(guidance, "guidance"),
                          whole_number(completions, "completions"), seed, optional_steps(steps))
        except DdpmkitError as err:
            raise gr.Error(str(err)) from None
        return [(enlarged(image), f"seed {seed + j}") for j, image in enumerate(images)]

    def inpaint(value, method, class_index, guidance, completions, seed, steps):
        return request(inpaint_painted, value, method, class_index, guidance, completions, seed, steps)

    def sdedit(value, strength, class_index, guidance, completions, seed, steps):
        return request(image_to_image, value, strength, class_index, guidance, completions, seed, steps)

    def converted(value):
        shown = as_the_model_sees(value, shape)
        return gr.skip() if shown is None else shown

    def pick(evt: gr.SelectData):
        return editor_value(tests[0][evt.index]), tests[1][evt.index]

    def thumbnails():
        return [(enlarged(image, THUMBNAIL_SIDE), sampler.class_names[c] if c != NO_CLASS else None)
                for image, c in zip(*tests)]

    defaults = ", ".join(f"{name} {m.steps}" for name, m in INPAINT_METHODS.items())
    with gr.Row():
        with gr.Column(scale=1):
            method = gr.Radio(list(INPAINT_METHODS), value="repaint", label="inpainting method", elem_id="method",
                              info="repaint resamples for seams that fit; replace is the plain, quicker way")
            choices = [("none (unconditional)", NO_CLASS), *((name, i) for i, name in enumerate(sampler.class_names))]
            class_index = gr.Dropdown(choices, value=NO_CLASS, label="class (to fill in, or to turn the image into)",
                                      visible=conditional, elem_id="edit-class")
            guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="guidance weight w (classifier-free)",
                                 visible=conditional, elem_id="edit-guidance")
            completions = gr.Slider(1, MAX_COMPLETIONS, value=4, step=1, label="completions", elem_id="completions")
            seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_PAGE_SEED, elem_id="edit-seed",
                             label="seed (completion j starts from seed + j)")
            steps = gr.Number(0, precision=0, minimum=0, elem_id="edit-steps",
                              label=f"steps (0: the method's own, {defaults}, image-to-image {SDEDIT_STEPS})")
            inpaint_button = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
            strength = gr.Slider(0, 1, value=SDEDIT_STRENGTH, step=0.05, elem_id="strength",
                                 label="strength (image-to-image: 0 keeps the image, 1 draws a new one)")
            edit_button = gr.Button("Image-to-image (SDEdit)", elem_id="image-to-image")
        with gr.Column(scale=2):
            editor = gr.ImageEditor(type="pil", format="png", sources=("upload",), transforms=(), layers=False,
                                    brush=gr.Brush(colors=[("#ff00ff", 0.7)], color_mode="fixed"), elem_id="editor",
                                    label=f"the image, as the model sees it ({shape[2]}x{shape[1]}): paint over what "
                                          f"to generate")
            examples = gr.Gallery(label="or pick a test image", visible=tests is not None, columns=TEST_IMAGES,
                                  allow_preview=False, format="png", height=150, buttons=[], elem_id="test-images")
            gallery = gr.Gallery(label="results", columns=4, format="png", elem_id="results")
    # No progress overlay on the editor while an upload is looked at: it swallowed the strokes painted meanwhile.
    editor.upload(converted, editor, editor, show_progress="hidden", api_visibility="private")
    # Page mechanics, not an API. The thumbnails come with each page load: files a page was built with stay in
    # Gradio's cache after the demo stops.
    examples.select(pick, None, [editor, class_index], api_visibility="private")
    if tests is not None:
        gr.on(None, thumbnails, None, examples, show_progress="hidden", api_visibility="private")
    inpaint_button.click(inpaint, [editor, method, class_index, guidance, completions, seed, steps], gallery,
                         concurrency_id="model")
    edit_button.click(sdedit, [editor, strength, class_index, guidance, completions, seed, steps], gallery,
                      concurrency_id="model")

