"""A timed race: ddpmkit and diffusers trained for the same wall-clock budget, then sampled and judged alike.

Run by hand (not a test), one command per ddpmkit recipe, e.g. on 2 CPU cores:

    python benchmarks/race.py --preset quick_uncond --minutes 10 --seeds 0,1 --json docs/race_cpu.json
    python benchmarks/race.py --preset quick --name quick_cond --minutes 10 --seeds 0,1 --json docs/race_cpu.json
    python benchmarks/race.py --preset quick_uncond --set diffusion.loss_weighting=none --name "-min-snr" \\
        --minutes 10 --seeds 0 --json docs/race_cpu.json          # an ablation row
    python benchmarks/race.py --json docs/race_cpu.json --table   # the tables of what is measured

The objectives' race (issue #25, docs/race.md) runs two lanes at once, one per seed, each a single thread pinned to
its own core (``taskset -c 0 ... --threads 1 --seeds 0``; scripts/race_objectives.sh), so both seeds of every
system train under the same conditions in half the time.

Per seed, the diffusers baselines (benchmarks/diffusers_baseline.py: its train_unconditional example scaled down,
and the same loop on ddpmkit's network shape; every choice written there; ``--baselines``) and ddpmkit's recipe (a
preset plus ``--set`` overrides) each train for ``--minutes``,
one after the other on the same images. A run's number of optimizer steps is sized beforehand from a short timed
calibration of the same system (its steps per second times the budget, so that its cosine learning-rate schedule
ends when the time does), and the budget is a hard deadline: a run still going when it ends stops there (on this
shared VM the speed drifts by 10-20% between the calibration and the run). The steps done, those planned and the
wall time of every run are in the JSON. All get 1,000 samples (image i from
seed i; a conditional model draws class i mod 10, unguided) with the same number of network evaluations (NFE),
through ddpmkit's samplers with the same per-image noise: the DDPM-family networks (the baselines and the ddpm
objective) with one sampler (``--sampler``, default sde-dpm++2m, ddpmkit's default), an edm or flow model with
its objective's default sampler (``--sampler`` names it for all ddpmkit rows instead), and the same judge: the domain FD and
classifier IS against the test split (``ddpmkit evaluate``), and the accuracy for conditional models. A trained
network or a measured row already in the work folder or JSON is reused: an interrupted race continues, and the
baseline of one command serves the next. A side-by-side PNG of the first 64 samples of each goes to --grid-dir.

Training must have the machine to itself; run nothing else meanwhile (the JSON records the load average).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers_baseline  # noqa: E402

from ddpmkit.config import default_sampler, resolve_config, samplers_of  # noqa: E402
from ddpmkit.data import from_model_range, load_images  # noqa: E402
from ddpmkit.evaluate import evaluate, read_samples  # noqa: E402
from ddpmkit.files import write_json  # noqa: E402
from ddpmkit.samplers import SAMPLERS  # noqa: E402
from ddpmkit.sampling import DiffusionSampler  # noqa: E402
from ddpmkit.schedule import NoiseSchedule  # noqa: E402
from ddpmkit.seeded_sampling import generate_images  # noqa: E402
from ddpmkit.train import train  # noqa: E402
from ddpmkit.viz import write_npz  # noqa: E402

BASELINE = "diffusers"             # diffusers' train_unconditional example at 1.06M parameters (issue #13)
SAME_SIZE = "diffusers-same-size"  # the same loop on the ddpmkit preset's network shape and batch (issue #25)
BASELINES = (BASELINE, SAME_SIZE)
TWO_EVALUATION_SAMPLERS = ("heun",)  # samplers spending 2 network evaluations per step (the last step 1)


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The step count that spends at most ``nfe`` network evaluations (Heun: 2 per step, 1 for the last)."""
    return (nfe + 1) // 2 if sampler in TWO_EVALUATION_SAMPLERS else nfe


def evaluations(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler in TWO_EVALUATION_SAMPLERS else steps


def baseline_settings(name: str, cfg) -> dict:
    return diffusers_baseline.SETTINGS if name == BASELINE else diffusers_baseline.same_size_settings(cfg)


def race_config(preset: str, overrides: list[str], steps: int, seed: int):
    """The recipe trained for ``steps`` steps: no held-out evaluations and one checkpoint at the end (the baseline
    has neither), everything else as the preset and overrides say."""
    return resolve_config(preset, overrides=[*overrides, f"train.steps={steps}", f"train.seed={seed}",
                                            "train.eval_every=0", "train.fd_every=0", "train.sample_every=0",
                                            f"train.checkpoint_every={steps}", "train.log_every=50"])


def ddpmkit_calibration(preset: str, overrides: list[str], calibration_steps: int = 100) -> tuple[float, float]:
    """The recipe's optimizer steps per second here and now, from the log of a throw-away run (its first 20-step
    interval left out), and the seconds of the run that are not steps: start-up (reading the data), the end's
    sample grid and checkpoint. Both sides are sized as steps = (budget - overhead) x steps per second."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = race_config(preset, overrides, calibration_steps, seed=12345)
        cfg.train.log_every = 20
        start = time.perf_counter()
        train(cfg, tmp, progress=False)
        wall = time.perf_counter() - start
        rates = [json.loads(line)["images_per_s"] for line in (Path(tmp) / "log.jsonl").read_text().splitlines()
                 if '"images_per_s"' in line][1:]
    rate = statistics.median(rates) / cfg.train.batch_size
    return rate, max(0.0, wall - calibration_steps / rate)


def train_ddpmkit(preset: str, overrides: list[str], minutes: float, seed: int, run_dir: Path) -> dict:
    """Train the recipe for the steps the budget allows; if the budget runs out first (the calibration was
    optimistic), Ctrl-C at the deadline stops it as it stops any run: the step finishes and ``latest.pt`` is saved."""
    if (run_dir / "race.json").is_file():
        return json.loads((run_dir / "race.json").read_text())
    rate, overhead = ddpmkit_calibration(preset, overrides)
    steps = max(1, int(rate * (minutes * 60 - overhead)))
    cfg = race_config(preset, overrides, steps, seed)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    deadline = threading.Timer(minutes * 60, signal.raise_signal, (signal.SIGINT,))
    deadline.start()
    try:
        train(cfg, run_dir, resume=False)
    except KeyboardInterrupt:  # the deadline: the loop saved latest.pt (or had just saved it before finishing)
        print(f"{run_dir.name}: stopped at the {minutes:g}-minute deadline")
    finally:
        deadline.cancel()
    seconds = time.perf_counter() - start
    done = int(torch.load(run_dir / "latest.pt", map_location="cpu", weights_only=True)["step"])
    info = {"steps": done, "planned_steps": steps, "train_seconds": round(seconds, 1),
            "calibrated_steps_per_s": rate, "calibrated_overhead_s": round(overhead, 1),
            "images_seen": done * cfg.train.batch_size, "load_before": load_before,
            "load_after": os.getloadavg()[0], "preset": preset, "overrides": overrides}
    write_json(run_dir / "race.json", info)
    return info


def train_baseline(images: torch.Tensor, minutes: float, seed: int, run_dir: Path, settings: dict) -> dict:
    if (run_dir / "info.json").is_file():
        return json.loads((run_dir / "info.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    rate, overhead = diffusers_baseline.calibration(images, settings)
    load_before = os.getloadavg()[0]
    info = diffusers_baseline.train(images, max(1, int(rate * (minutes * 60 - overhead))), seed, run_dir,
                                    time_limit_s=minutes * 60, settings=settings)
    info.update(calibrated_steps_per_s=rate, calibrated_overhead_s=round(overhead, 1), load_before=load_before,
                load_after=os.getloadavg()[0], settings=settings)
    (run_dir / "info.json").write_text(json.dumps(info, indent=1))
    return info


class BaselineSampler:
    """The baseline's EMA network behind the part of DiffusionSampler's interface the race uses."""

    def __init__(self, run_dir: Path):
        from diffusers import DDPMScheduler

        self.unet = diffusers_baseline.load_ema_unet(run_dir)
        betas = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").betas
        self.schedule = NoiseSchedule(betas.double())
        self.is_conditional = False
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        self.image_shape = (c, s, s)

    @torch.no_grad()
    def generate(self, seeds, labels, sampler, steps, batch_size, progress):
        """The seeds' images, drawn as DiffusionSampler.generate draws them (seeded_sampling.generate_images)."""
        def draw(x_T, noise, y):
            x0 = SAMPLERS[sampler](lambda x, t: self.unet(x, t).sample, self.schedule, x_T, noise=noise,
                                   steps=steps, prediction="eps", clip_range=(-1.0, 1.0), progress=progress)
            return from_model_range(x0.float())

        return generate_images(draw, self.image_shape, seeds, labels, batch_size, progress=False)


def score(model, samples: int, sampler: str, steps: int, dataset: str, npz: Path) -> dict:
    """Judge ``samples`` images of ``model`` as ``ddpmkit evaluate --samples`` does (they are kept in ``npz``)."""
    seeds = list(range(samples))
    # Image i of class i mod 10: the layout docs/race.md's numbers and grids (a row cycles through the classes) were
    # measured with; 100 images of each class, as class_blocks would give.
    labels = [i % 10 for i in seeds] if model.is_conditional else None
    start = time.perf_counter()
    images = model.generate(seeds, labels, sampler=sampler, steps=steps, batch_size=500, progress=False)
    seconds = time.perf_counter() - start
    write_npz(images, npz, seeds, labels)
    report = evaluate(samples=npz, dataset=dataset, split="test", metrics=("fd", "is", "accuracy"), progress=False)
    metrics = {("fd" if k.startswith("fd_") else k): v for k, v in report["metrics"].items()}
    return {**metrics, "sampling_seconds": round(seconds, 1),
            "judge_test_accuracy": report["feature_network"]["test_accuracy"]}


def labelled_grid(images: torch.Tensor, title: str) -> Image.Image:
    grid = make_grid(images[:64], nrow=8, padding=2, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    tile = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")
    canvas = Image.new("RGB", (tile.width, tile.height + 16), "white")
    canvas.paste(tile, (0, 16))
    ImageDraw.Draw(canvas).text((2, 2), title, fill="black")
    return canvas


def save_side_by_side(tiles: list[Image.Image], path: Path) -> None:
    canvas = Image.new("RGB", (sum(t.width + 8 for t in tiles) - 8, max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def race(a: argparse.Namespace) -> None:
    out, work = Path(a.json[0]), Path(a.work)
    done = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    done.setdefault("machine", {"platform": platform.platform(), "torch": torch.__version__,
                                "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                "cores_of_this_process": sorted(os.sched_getaffinity(0))})
    cfg = resolve_config(a.preset, overrides=a.set)
    done["baseline_settings"] = {name: baseline_settings(name, cfg) for name in a.baselines}
    measured = {row_key(r) for r in done["rows"]}
    images = load_images(cfg.data, "train").images
    budget = f"{a.minutes:g}min"
    recipe_sampler = a.sampler or default_sampler(cfg.diffusion.objective)
    for seed in a.seeds:
        systems = {name: work / f"{name}_{budget}_seed{seed}" for name in a.baselines}
        systems[a.name] = work / f"{a.name}_{budget}_seed{seed}"
        trained = {}
        for name, run_dir in systems.items():
            trained[name] = (train_baseline(images, a.minutes, seed, run_dir, baseline_settings(name, cfg))
                             if name in BASELINES else train_ddpmkit(a.preset, a.set, a.minutes, seed, run_dir))
            print(f"{name} seed {seed}: {trained[name]['steps']} steps in {trained[name]['train_seconds']} s")
        for name, run_dir in systems.items():
            model = None
            sampler = a.baseline_sampler if name in BASELINES else recipe_sampler
            for nfe in a.nfe:
                steps = steps_for_nfe(sampler, nfe)
                row = {"system": name, "seed": seed, "minutes": a.minutes, "sampler": sampler, "nfe": nfe}
                if row_key(row) in measured:
                    continue
                model = model or (BaselineSampler(run_dir) if name in BASELINES
                                  else DiffusionSampler(run_dir / "latest.pt", device="cpu"))
                metrics = score(model, a.samples, sampler, steps, cfg.data.dataset, run_dir / f"{sampler}{nfe}.npz")
                info = trained[name]
                row.update(conditional=model.is_conditional, steps=info["steps"], train_seconds=info["train_seconds"],
                           images_seen=info["images_seen"], load=[info["load_before"], info["load_after"]],
                           sampling_steps=steps, evaluations=evaluations(sampler, steps),
                           threads=torch.get_num_threads(),
                           recipe=(f"diffusers train_unconditional, {info['settings']['block_out_channels']} "
                                   f"batch {info['settings']['batch_size']}") if name in BASELINES else
                           " ".join([f"--preset {info['preset']}", *(f"--set {o}" for o in info["overrides"])]),
                           date=datetime.date.today().isoformat(), **metrics)
                done["rows"].append(row)
                measured.add(row_key(row))
                write_json(out, done)
                print(json.dumps(row))
        nfe = max(a.nfe)
        tiles = []
        for name, run_dir in systems.items():
            sampler = a.baseline_sampler if name in BASELINES else recipe_sampler
            tiles.append(labelled_grid(read_samples(run_dir / f"{sampler}{nfe}.npz")[0],
                                       f"{name}, {sampler}, {nfe} NFE, seed {seed}"))
        save_side_by_side(tiles, Path(a.grid_dir) / f"race_{a.name}_seed{seed}.png")
    print(table(done["rows"]))


def grids_of(names: list[str], rows: list[dict], work: Path, grid_dir: Path, title: str) -> list[Path]:
    """Per seed, one side-by-side PNG of the first 64 samples of each system in ``names`` at its largest NFE (the
    samples kept in the work folder), from the rows already measured."""
    written = []
    for seed in sorted({r["seed"] for r in rows if r["system"] in names}):
        tiles = []
        for name in names:
            mine = [r for r in rows if r["system"] == name and r["seed"] == seed]
            if not mine:
                raise SystemExit(f"--grid-of: no rows of {name} with seed {seed} in the JSON")
            best = max(mine, key=lambda r: (r["nfe"], -r["fd"]))
            run_dir = work / f"{name}_{best['minutes']:g}min_seed{seed}"
            tiles.append(labelled_grid(read_samples(run_dir / f"{best['sampler']}{best['nfe']}.npz")[0],
                                       f"{name}, {best['sampler']}, {best['nfe']} NFE, seed {seed}"))
        path = grid_dir / f"race_{title}_seed{seed}.png"
        save_side_by_side(tiles, path)
        written.append(path)
    return written


def row_key(row: dict) -> tuple:
    return row["system"], row["seed"], row["minutes"], row["sampler"], row["nfe"]


def table(rows: list[dict]) -> str:
    """Medians over seeds per system, sampler and evaluations, with FD as a ratio to each baseline's median at the
    same budget and NFE (its best sampler there)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["minutes"], r["nfe"], r["system"], r["sampler"]), []).append(r)
    medians = {k: statistics.median(x["fd"] for x in g) for k, g in groups.items()}
    base = {}
    for k, fd in medians.items():
        if k[2] in BASELINES:
            base[(k[0], k[1], k[2])] = min(fd, base.get((k[0], k[1], k[2]), float("inf")))
    lines = ["| minutes | NFE | system | sampler | seeds | steps | images seen | FD | FD / diffusers | "
             "FD / same-size diffusers | IS | accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(groups, key=lambda k: (k[0], k[1], k[2] not in BASELINES, k[2], k[3])):
        g, fd = groups[k], medians[k]
        ratios = [f"{fd / base[(k[0], k[1], b)]:.2f}" if (k[0], k[1], b) in base else "-" for b in BASELINES]
        accuracy = (f"{statistics.median(x['accuracy'] for x in g):.3f}" if all("accuracy" in x for x in g) else "-")
        lines.append(f"| {k[0]:g} | {k[1]} | {k[2]} | {k[3]} | {','.join(str(x['seed']) for x in g)} | "
                     f"{statistics.median(x['steps'] for x in g):.0f} | "
                     f"{statistics.median(x['images_seen'] for x in g):.0f} | {fd:.2f} | {' | '.join(ratios)} | "
                     f"{statistics.median(x['classifier_is'] for x in g):.2f} | {accuracy} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick_uncond", help="ddpmkit's recipe: a preset (default quick_uncond)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="and overrides of it")
    p.add_argument("--name", help="the recipe's name in the tables (default: the preset's)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each system (default 10)")
    p.add_argument("--seeds", default="0,1", help="training seeds, one race each (default 0,1)")
    p.add_argument("--nfe", default="20,50", help="network evaluations per sample (default 20,50)")
    p.add_argument("--sampler", help="the recipe's sampler (default: its objective's default sampler)")
    p.add_argument("--baseline-sampler", default="sde-dpm++2m", help="the baselines' sampler (default sde-dpm++2m)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"which baselines to race, comma-separated (default {','.join(BASELINES)})")
    p.add_argument("--skip-baseline", action="store_true", help="train and score ddpmkit's recipe only")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    p.add_argument("--work", default="runs/race", help="where the trained networks and samples go")
    p.add_argument("--grid-dir", default="docs/images", help="where the side-by-side sample grids go")
    p.add_argument("--json", required=True, action="append",
                   help="results, row by row; an existing file is continued (--table: several files are merged)")
    p.add_argument("--table", action="store_true", help="only print the tables of the rows in --json")
    p.add_argument("--grid-of", metavar="NAMES", help="only write, per seed, a side-by-side grid of these systems "
                   "(comma-separated) at their largest NFE, from the rows in --json and the samples in --work; "
                   "named --name")
    a = p.parse_args()
    if a.table or a.grid_of:
        rows = [row for path in a.json for row in json.loads(Path(path).read_text())["rows"]]
        if a.grid_of:
            for path in grids_of(a.grid_of.split(","), rows, Path(a.work), Path(a.grid_dir), a.name or "grid"):
                print(f"wrote {path}")
        else:
            print(table(rows))
        return
    if len(a.json) > 1:
        p.error("--json: a race writes one file (several only with --table)")
    a.name = a.name or a.preset
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.nfe = [int(n) for n in a.nfe.split(",")]
    a.baselines = [] if a.skip_baseline else [b for b in a.baselines.split(",") if b]
    if unknown := set(a.baselines) - set(BASELINES):
        p.error(f"--baselines: {', '.join(sorted(unknown))} unknown; choose from {', '.join(BASELINES)}")
    objective = resolve_config(a.preset, overrides=a.set).diffusion.objective
    if a.sampler and a.sampler not in samplers_of(objective):
        p.error(f"--sampler: {objective} models take one of {', '.join(samplers_of(objective))}")
    if a.baseline_sampler not in SAMPLERS:
        p.error(f"--baseline-sampler: choose one of {', '.join(SAMPLERS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    race(a)


if __name__ == "__main__":
    main()
