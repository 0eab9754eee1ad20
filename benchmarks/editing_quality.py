"""Inpainting and class-swapping of a trained model: replacement against RePaint at equal network evaluations, and
SDEdit towards another class (docs/editing.md).

Run by hand (not a test), e.g. on the README's quick model:

    python benchmarks/editing_quality.py --checkpoint runs/quick --json docs/editing/quick_cpu.json \
        --out docs/editing/quick_cpu --masks right,centre --swap-guidance 2

The images are the first ``--images / K`` real images of each of the K classes of ``--split`` (class after class);
image i is edited with seed ``--seed`` + i. For each mask, replacement and RePaint (Lugmayr et al. 2022) complete
them at the same number of network evaluations: RePaint at INPAINT_METHODS' defaults (or ``--repaint STEPS,JUMP,N``;
``--nfe`` picks the step count whose evaluations come closest to it), replacement with as many steps as RePaint
evaluates the network. Completions get no class (the null label of a conditional model) unless ``--guidance`` w
asks for each image's true class at that w (two evaluations per step when w > 0). Measured per row: whether the known pixels came back unchanged (the largest
absolute difference, and how many uint8 values changed: 0 expected), FD-<dataset>-classifier of the completions
against the whole split (the judge classifier's features, as ``ddpmkit evaluate`` measures it), the judge's accuracy
on the completions over its accuracy on the originals, PSNR over the masked region, LPIPS over the whole image
(skipped, with the reason, when the backbone weights are absent), wall time and images/s.

Class-swapping: SDEdit (Meng et al. 2022) of the same images towards class (c + 1) mod K at each of
``--swap-strengths`` with ``--swap-guidance`` w: the share the judge assigns to the target class, the share it still
assigns to the source class, and PSNR and LPIPS to the originals.

Each row goes to the JSON as soon as it is measured, and its images to ``--out`` as an .npz; rows already in the JSON
are skipped (their pictures are drawn from the .npz). Pictures in ``--out``: ``inpaint_<mask>.png`` (rows original,
masked, replacement, RePaint; one image of each class) and ``swap.png`` (the originals, then one row per strength;
column c goes to class c + 1). ``--table`` prints the tables of the JSON and stops.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpmkit.data import load_images, to_uint8, to_unit_range
from ddpmkit.editing.edits import INPAINT_METHODS, SDEDIT_STEPS, inpaint_evaluations, inpaint_masks, sdedit_start
from ddpmkit.editing.masks import masks_for
from ddpmkit.errors import DdpmkitError
from ddpmkit.evaluate import real_config_of_model, read_samples
from ddpmkit.files import write_json
from ddpmkit.metrics.classifier import SmallClassifier, check_compatible, load_classifier, predict
from ddpmkit.metrics.domain import add_fake, add_real, classifier_fd_metric, file_sha256, statistics_key
from ddpmkit.metrics.perceptual import lpips_metric, paired_lpips
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.viz import save_labelled_grid, write_npz

METHOD_NAMES = {"replace": "replacement", "repaint": "RePaint"}


@dataclass
class Bench:
    """What every row is measured with: the model, the real images being edited and the judges."""
    sampler: DiffusionSampler
    originals: torch.Tensor        # uint8 (N, C, H, W), class after class
    labels: torch.Tensor           # (N,) their true classes
    classes: list[str]             # the dataset's class names
    judge: SmallClassifier
    fd: object                     # torchmetrics FID on the judge's features, the split's statistics in it
    lpips: object | None           # torchmetrics LPIPS, or None when its backbone weights are absent
    seed: int
    batch_size: int

    @property
    def unit(self) -> torch.Tensor:
        return to_unit_range(self.originals)

    def frechet_distance(self, images: torch.Tensor) -> float:
        self.fd.reset()  # keeps the real statistics (reset_real_features=False)
        add_fake(self.fd, images, progress=False)
        return float(self.fd.compute())

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((predict(self.judge, images) == labels).float().mean())


# -- choosing the images and the settings ------------------------------------------------------------------------------

def first_of_each_class(real, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count / K`` images of each of the K classes of a labelled split, class after class."""
    if real.images is None or real.labels is None or not real.num_classes:
        raise DdpmkitError("editing_quality needs a labelled data set held in memory (the judge's: MNIST-like)")
    per_class, left = divmod(count, real.num_classes)
    if left or per_class < 1:
        raise DdpmkitError(f"--images {count} must be a positive multiple of the {real.num_classes} classes")
    chosen = [torch.nonzero(real.labels == c).flatten()[:per_class] for c in range(real.num_classes)]
    short = [real.class_names[c] for c, idx in enumerate(chosen) if len(idx) < per_class]
    if short:
        raise DdpmkitError(f"fewer than {per_class} images of {', '.join(short)} in the split")
    index = torch.cat(chosen)
    return real.images[index], real.labels[index]


def repaint_setting(repaint: str | None, nfe: int | None) -> tuple[int, int, int]:
    """RePaint's (steps, jump_length, jump_n_sample): ``--repaint`` or INPAINT_METHODS' defaults; with ``--nfe`` the
    step count (at that jump length and count) whose network evaluations come closest to it."""
    d = INPAINT_METHODS["repaint"]
    steps, jump, n = (int(v) for v in repaint.split(",")) if repaint else (d.steps, d.jump_length, d.jump_n_sample)
    if nfe is None:
        return steps, jump, n
    valid = range(jump + 1 if n > 1 else 1, 4 * nfe + 2)  # RePaint resamples only when jump_length < steps
    steps = min(valid, key=lambda s: (abs(inpaint_evaluations("repaint", s, jump, n) - nfe), s))
    return steps, jump, n


def inpaint_plan(args: argparse.Namespace, guidance: float) -> list[dict]:
    steps, jump, n = repaint_setting(args.repaint, args.nfe)
    evaluations = inpaint_evaluations("repaint", steps, jump, n)
    settings = {"repaint": {"steps": steps, "jump_length": jump, "jump_n_sample": n},
                "replace": {"steps": evaluations, "jump_length": 1, "jump_n_sample": 1}}
    rows = []
    for mask in args.masks:
        for method, s in settings.items():
            given = "no class" if guidance is None else f"true class w={guidance:g}"
            rows.append({"kind": "inpaint", "mask": mask, "method": method, **s, "guidance": guidance,
                         "nfe": evaluations * (2 if guidance else 1),
                         "key": f"inpaint {mask} {method} {s['steps']}/{s['jump_length']}/{s['jump_n_sample']} "
                                f"{given}"})
    return rows


def swap_plan(args: argparse.Namespace) -> list[dict]:
    steps = args.swap_steps
    rows = []
    for strength in args.swap_strengths:
        run = steps - sdedit_start(strength, steps)
        rows.append({"kind": "swap", "strength": strength, "steps": steps, "steps_run": run,
                     "guidance": args.swap_guidance, "nfe": run * (2 if args.swap_guidance else 1),
                     "key": f"swap s={strength:g} steps={steps} w={args.swap_guidance:g}"})
    return rows


# -- measuring ---------------------------------------------------------------------------------------------------------

def masked_psnr(images: torch.Tensor, originals: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB, mean over images) of float images in [0, 1] over the pixels where ``mask`` (N, 1, H, W) is 1."""
    m = mask.expand_as(images)
    mse = ((images - originals) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean())


def perceptual(bench: Bench, images: torch.Tensor) -> dict:
    return {"lpips": round(paired_lpips(bench.lpips, images, bench.unit), 4)} if bench.lpips is not None else {}


def timed(fn) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure_inpaint(bench: Bench, row: dict) -> tuple[dict, torch.Tensor]:
    completed, seconds = timed(lambda: bench.sampler.inpaint(
        bench.originals, row["mask"], method=row["method"], seed=bench.seed,
        labels=bench.labels if row["guidance"] is not None else None, guidance=row["guidance"] or 0.0,
        steps=row["steps"], jump_length=row["jump_length"], jump_n_sample=row["jump_n_sample"], batch_size=bench.batch_size,
        progress=False))
    n = len(completed)
    masks = inpaint_masks(bench.sampler, row["mask"], n, bench.seed)  # the masks inpaint drew
    known = (masks < 0.5).expand_as(completed)
    as_saved = to_unit_range(to_uint8(completed, zero_one=True))  # what a PNG of the completions holds
    accuracy = bench.accuracy(as_saved, bench.labels)
    return {**row,
            "known_max_abs_diff": float((completed - bench.unit).abs()[known].max()),
            "known_changed_uint8": int((to_uint8(completed, zero_one=True) != bench.originals)[known].sum()),
            "fd": round(bench.frechet_distance(as_saved), 4),
            "accuracy": round(accuracy, 4),
            "accuracy_ratio": round(accuracy / bench.accuracy(bench.unit, bench.labels), 4),
            "psnr_masked": round(masked_psnr(as_saved, bench.unit, masks), 2), **perceptual(bench, as_saved),
            "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 2)}, completed


def measure_swap(bench: Bench, row: dict) -> tuple[dict, torch.Tensor]:
    target = (bench.labels + 1) % len(bench.classes)
    edited, seconds = timed(lambda: bench.sampler.edit(
        bench.originals, row["strength"], labels=target, guidance=row["guidance"], seed=bench.seed,
        steps=row["steps"], batch_size=bench.batch_size, progress=False))
    as_saved = to_unit_range(to_uint8(edited, zero_one=True))
    everywhere = torch.ones(len(edited), 1, *edited.shape[2:])
    return {**row, "target_share": round(bench.accuracy(as_saved, target), 4),
            "source_share": round(bench.accuracy(as_saved, bench.labels), 4),
            "psnr": round(masked_psnr(as_saved, bench.unit, everywhere), 2), **perceptual(bench, as_saved),
            "seconds": round(seconds, 1), "images_per_s": round(len(edited) / seconds, 2)}, edited


def reference_row(bench: Bench) -> dict:
    """The unedited originals: the FD floor at this number of images, and the judge's own accuracy on them."""
    return {"kind": "originals", "key": "originals", "fd": round(bench.frechet_distance(bench.unit), 4),
            "accuracy": round(bench.accuracy(bench.unit, bench.labels), 4)}


# -- reading, writing, showing -----------------------------------------------------------------------------------------

def read_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"rows": []}


def save_results(path: Path, results: dict, args: argparse.Namespace) -> None:
    write_json(path, {**results, "command": " ".join(["python", "benchmarks/editing_quality.py", *args.argv]),
                      "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "date": datetime.date.today().isoformat()})


def images_file(out: Path, row: dict) -> Path:
    return out / (row["key"].replace(" ", "_").replace("/", "-").replace("=", "") + ".npz")


def _f(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


INPAINT_HEADER = ["| mask | method | steps / jump / n | NFE | known uint8 changed | known max abs diff | FD | "
                  "accuracy | / originals | PSNR masked (dB) | LPIPS | s | images/s |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
SWAP_HEADER = ["| strength | steps run | w | NFE | judged target | judged source | PSNR (dB) | LPIPS | s | images/s |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def table_line(r: dict) -> str:
    """One row of the inpainting or the swap table, or the originals' line."""
    if r["kind"] == "originals":
        return f"Originals: FD {r['fd']:.2f} (the floor at this many images), judge accuracy {r['accuracy']:.3f}"
    if r["kind"] == "inpaint":
        return (f"| {r['mask']} | {METHOD_NAMES[r['method']]} | {r['steps']} / {r['jump_length']} / "
                f"{r['jump_n_sample']} | {r['nfe']} | {r['known_changed_uint8']} | {r['known_max_abs_diff']:.2g} | "
                f"{r['fd']:.2f} | {r['accuracy']:.3f} | {r['accuracy_ratio']:.3f} | {r['psnr_masked']:.2f} | "
                f"{_f(r, 'lpips', '.3f')} | {r['seconds']:.1f} | {r['images_per_s']:.2f} |")
    return (f"| {r['strength']:g} | {r['steps_run']} of {r['steps']} | {r['guidance']:g} | {r['nfe']} | "
            f"{r['target_share']:.3f} | {r['source_share']:.3f} | {r['psnr']:.2f} | {_f(r, 'lpips', '.3f')} | "
            f"{r['seconds']:.1f} | {r['images_per_s']:.2f} |")


def tables(rows: list[dict]) -> str:
    lines = [table_line(r) for r in rows if r["kind"] == "originals"]
    for kind, header in (("inpaint", INPAINT_HEADER), ("swap", SWAP_HEADER)):
        some = [table_line(r) for r in rows if r["kind"] == kind]
        lines += ["", *header, *some] if some else []
    return "\n".join(lines)


def draw_grids(bench: Bench, planned: list[dict], out: Path) -> None:
    """One image of each class per row: per mask original / masked / replacement / RePaint, and the swap."""
    per_class = len(bench.originals) // len(bench.classes)
    columns = [c * per_class for c in range(len(bench.classes))]
    originals = bench.unit[columns]
    size = bench.sampler.image_shape[-1]

    def edited(row: dict) -> torch.Tensor | None:
        path = images_file(out, row)
        return read_samples(path)[0][columns] if path.is_file() else None

    for mask in dict.fromkeys(r["mask"] for r in planned if r["kind"] == "inpaint"):
        rows = [r for r in planned if r["kind"] == "inpaint" and r["mask"] == mask]
        drawn = [edited(r) for r in rows]
        if any(d is None for d in drawn):
            print(f"no inpainting picture for mask {mask}: its images are not all in {out}")
            continue
        m = masks_for(mask, len(columns), size, [bench.seed + i for i in columns])
        masked = originals * (1 - m) + 0.5 * m  # the part to generate in grey
        labels = ["original", "masked"] + [f"{METHOD_NAMES[r['method']]}, {r['nfe']} NFE" for r in rows]
        picture = save_labelled_grid(torch.cat([originals, masked, *drawn]), out / f"inpaint_{mask}.png",
                                     nrow=len(columns), row_labels=labels, col_labels=bench.classes)
        print(f"wrote {picture}")
    rows = [r for r in planned if r["kind"] == "swap"]
    drawn = [edited(r) for r in rows]
    if rows and all(d is not None for d in drawn):
        labels = ["original"] + [f"to the next class, s={r['strength']:g}" for r in rows]
        picture = save_labelled_grid(torch.cat([originals, *drawn]), out / "swap.png", nrow=len(columns),
                                     row_labels=labels, col_labels=bench.classes)
        print(f"wrote {picture}")


# -- the run -----------------------------------------------------------------------------------------------------------

def setup(args: argparse.Namespace, sampler: DiffusionSampler, notes: list[str]) -> Bench:
    """The images to edit and the judges: the classifier (checked to fit the model), FD's statistics of the split,
    LPIPS when its backbone is present."""
    real_cfg = real_config_of_model(sampler.config.data, None, "", None)  # the split as evaluate compares with it
    judge, info = load_classifier(args.classifier or real_cfg.dataset)
    channels, size, _ = sampler.image_shape
    check_compatible(info, sampler.class_names, size, channels, real_cfg.resize_mode)
    real = load_images(real_cfg, args.split)
    originals, labels = first_of_each_class(real, args.images)
    fd = classifier_fd_metric(judge, tuple(originals.shape[1:]))
    add_real(fd, real.images, statistics_key(real_cfg.dataset, args.split, real.images, info["sha256"]),
             progress=False)
    try:
        lpips = lpips_metric(args.lpips_net, args.lpips_weights)
    except FileNotFoundError as missing:
        lpips = None
        notes.append(f"LPIPS skipped: {missing}")
        print(notes[-1])
    return Bench(sampler, originals, labels, real.class_names, judge, fd, lpips, args.seed, args.batch_size)


def settings_of(args: argparse.Namespace, sampler: DiffusionSampler) -> dict:
    """What every row depends on: a JSON measured with other settings is not continued."""
    return {"checkpoint": str(sampler.weights_file), "checkpoint_sha256": file_sha256(sampler.weights_file),
            "images": args.images, "split": args.split, "seed": args.seed, "classifier": args.classifier,
            "images_chosen": "the first images of each class of the split, class after class",
            "fd": f"FD-{sampler.config.data.dataset}-classifier against the whole {args.split} split",
            "lpips": f"{args.lpips_net}, whole image", "device": str(sampler.device)}


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="the model: a run directory or a .pt file")
    parser.add_argument("--json", required=True, help="rows, written as they are measured; rows there are skipped")
    parser.add_argument("--out", help="the rows' images (.npz) and the pictures (default: beside --json)")
    parser.add_argument("--images", type=int, default=1000, help="real images edited, equal per class (default 1000)")
    parser.add_argument("--split", default="test", choices=["test", "train"],
                        help="real split the images come from and FD compares with (train for a data set without "
                             "a test split, e.g. MNIST-10k)")
    parser.add_argument("--masks", default="right,centre", help="mask shapes (editing.masks; default right,centre)")
    parser.add_argument("--guidance", type=float,
                        help="complete towards each image's true class at this w (a conditional model); left out, "
                             "completions get no class (the null label), so that the judge's accuracy measures "
                             "whether a completion fits the known part alone")
    parser.add_argument("--repaint", help="RePaint's STEPS,JUMP,N (default: INPAINT_METHODS' "
                        f"{INPAINT_METHODS['repaint'].steps},{INPAINT_METHODS['repaint'].jump_length},"
                        f"{INPAINT_METHODS['repaint'].jump_n_sample})")
    parser.add_argument("--nfe", type=int, help="RePaint's steps chosen (at --repaint's JUMP,N) for this many "
                        "evaluations per image, as near as they come, before guidance doubles them; replacement gets "
                        "as many steps")
    parser.add_argument("--swap-strengths", type=floats, default=floats("0.3,0.5,0.6,0.7,0.8,0.9"))
    parser.add_argument("--swap-guidance", type=float, default=2.0, help="w of the class swap (default 2)")
    parser.add_argument("--swap-steps", type=int, default=SDEDIT_STEPS,
                        help=f"SDEdit's steps of the whole trajectory (default {SDEDIT_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="image i is edited with seed + i")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classifier", help="judge weights (default: the shipped ones for the model's data set)")
    parser.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    parser.add_argument("--lpips-weights", help="its torchvision backbone weights, if not in torch hub's cache")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--table", action="store_true", help="print the tables of --json and stop")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    path = Path(args.json)
    if args.table:
        print(tables(read_results(path)["rows"]))
        return
    if not args.checkpoint:
        parser.error("--checkpoint is needed to measure")
    args.masks = args.masks.split(",")
    sampler = DiffusionSampler(args.checkpoint, device=args.device)
    results, notes = read_results(path), []
    settings = settings_of(args, sampler)
    other = [f"{k} {results.get('settings', {}).get(k)} (now {v})" for k, v in settings.items()
             if k not in ("checkpoint", "device") and results.get("settings", {}).get(k) != v]
    if results["rows"] and other:
        raise DdpmkitError(f"{path} was measured with other settings: {'; '.join(other)}; give another --json")
    out = Path(args.out) if args.out else path.with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    guidance = args.guidance if sampler.is_conditional else None
    if guidance != args.guidance:
        notes.append(f"the model is unconditional: completions without labels (not at w = {args.guidance:g}); "
                     f"no class-swapping")
        print(notes[-1])
    bench = setup(args, sampler, notes)
    results.update(settings=settings, notes=notes)
    rows = results["rows"]
    planned = inpaint_plan(args, guidance) + (swap_plan(args) if sampler.is_conditional else [])
    repaint, replace = (next(r for r in planned if r.get("method") == m) for m in ("repaint", "replace"))
    print(f"RePaint {repaint['steps']} steps, jump {repaint['jump_length']}, {repaint['jump_n_sample']} samples and "
          f"replacement {replace['steps']} steps: {repaint['nfe']} network evaluations per image each"
          + (" (two per step with guidance)" if guidance else "") + (f"; --nfe {args.nfe}" if args.nfe else ""))
    if not any(r["key"] == "originals" for r in rows):
        rows.insert(0, reference_row(bench))
    for row in planned:
        if any(r["key"] == row["key"] for r in rows):
            continue
        measured, images = (measure_inpaint if row["kind"] == "inpaint" else measure_swap)(bench, row)
        write_npz(images, images_file(out, row), [args.seed + i for i in range(len(images))], bench.labels.tolist(),
                  **sampler.recorded_with_samples)
        rows.append(measured)
        save_results(path, results, args)
        print(table_line(measured), flush=True)
    save_results(path, results, args)
    print(tables(rows))
    draw_grids(bench, planned, out)


if __name__ == "__main__":
    try:
        main()
    except DdpmkitError as error:
        sys.exit(f"error: {error}")
