"""Throughput of ddpmkit's U-Net against diffusers' UNet2DModel built to the same architecture.

Run by hand (not a test), e.g. on a GPU:

    python benchmarks/throughput.py --preset ddpm-cifar10 --device cuda --precision bf16 --batch-sizes 128,512 \\
        --compile --full-loop --json throughput.json

(--compile takes an optional torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ...;
--measure train,forward leaves DDIM out, --systems diffusers measures diffusers alone: scripts/gpu_check.sh splits
its compiled runs so, each compilation in a window of its own)

In one process, for each system and batch size, it times
  train    the bare training step: forward, MSE eps loss (ddpmkit.losses.diffusion_loss), backward, AdamW step
  forward  denoiser forwards under inference_mode
  ddim     DDIM sampling (50 steps) through ddpmkit.samplers.sample_ddim, so that only the network differs
and reports images/s, achieved TFLOP/s (one forward's FLOPs counted by FlopCounterMode; training = 3x forward) and,
on CUDA, peak memory. --full-loop also times ddpmkit.train.train itself (data, EMA, clipping, logging: everything),
which needs the preset's dataset on disk. Prints a markdown table and, with --json, writes the numbers and the machine.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.build import autocast, noise_schedule, sampler_options, set_tf32, unet_spec
from ddpmkit.config import COMPILE_MODES, PRESETS, Config, resolve_config, validate
from ddpmkit.formats.diffusers_unet import Unsupported, unet2d_config
from ddpmkit.losses import diffusion_loss
from ddpmkit.samplers import sample_ddim
from ddpmkit.train import train
from ddpmkit.unet import UNet, UNetSpec

# (image channels, classes) of the datasets whose shape is known without reading them.
DATASET_SHAPES = {"mnist": (1, 10), "fashion_mnist": (1, 10), "cifar10": (3, 10), "celeba": (3, 0)}


# -- the two networks -----------------------------------------------------------------------------------------------

def model_spec(cfg: Config) -> UNetSpec:
    """The ddpmkit U-Net that training on ``cfg``'s dataset would build, without loading the dataset."""
    if cfg.data.dataset not in DATASET_SHAPES:
        raise SystemExit(f"benchmarks need a dataset of known shape ({', '.join(DATASET_SHAPES)}), "
                         f"not {cfg.data.dataset}")
    channels, classes = DATASET_SHAPES[cfg.data.dataset]
    return unet_spec(cfg, cfg.data.channels or channels, classes)


def diffusers_config(spec: UNetSpec) -> dict:
    """UNet2DModel arguments for the same network as ``UNet(spec)``: the layers and shapes of ``ddpmkit export``'s
    config (formats/diffusers_unet.py), so that the parameter counts agree exactly."""
    try:
        config = unet2d_config(spec)
    except Unsupported as err:
        raise SystemExit(f"{err}; use --skip-diffusers") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}


class DiffusersDenoiser(nn.Module):
    """A diffusers UNet2DModel behind ddpmkit's calling convention ``model(x_t, t, y=None) -> tensor``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t, class_labels=y).sample


class StepMarked(nn.Module):
    """A compiled network that opens a new CUDA-graph step at each call, as ddpmkit's CompiledDenoiser does: with
    mode reduce-overhead, a replay may then reuse the previous call's buffers (no effect in other modes)."""

    def __init__(self, compiled: Callable):
        super().__init__()
        self.compiled = compiled

    def forward(self, *args) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args)


SYSTEMS = ("ddpmkit", "diffusers")


def build_systems(spec: UNetSpec, names: list[str]) -> dict[str, Callable[[], nn.Module]]:
    """Name -> constructor of each network to measure, in the order of ``names``; diffusers only when installed."""
    systems: dict[str, Callable[[], nn.Module]] = {}
    for name in names:
        if name == "ddpmkit":
            systems["ddpmkit"] = lambda: UNet(spec)
            continue
        try:
            from diffusers import UNet2DModel
        except ImportError:
            print("diffusers is not installed: measuring ddpmkit only")
            continue
        config = diffusers_config(spec)
        systems["diffusers"] = lambda: DiffusersDenoiser(UNet2DModel(**config))
    return systems


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- measurements ---------------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Wall-clock seconds per call of ``fn`` after ``warmup`` untimed calls (which also trigger torch.compile)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


class PeakMemory:
    """The CUDA memory high-water mark inside a ``with`` block, in MiB (None on the CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def forward_flops(model: nn.Module, spec: UNetSpec, device: torch.device) -> int:
    """FLOPs of one forward on one image (multiply-adds count 2). Attention goes through the math backend here, whose
    matmuls are counted on every device; the fused CPU kernel would be invisible to FlopCounterMode."""
    x, t, y = inputs(spec, 1, device, channels_last=False)
    model.eval()
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, y)
    return counter.get_total_flops()


def inputs(spec: UNetSpec, batch_size: int, device: torch.device,
           channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch of images in [-1, 1], timesteps and (conditional models) labels; the values don't matter for speed."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch_size, spec.image_channels, spec.image_size, spec.image_size, generator=g) * 2 - 1).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch_size,), generator=g).to(device)
    y = torch.randint(0, spec.num_classes, (batch_size,), generator=g).to(device) if spec.num_classes else None
    return x, t, y


def measure_train(network: nn.Module, parameters: list[nn.Parameter], schedule, cfg: Config, x0: torch.Tensor,
                  y: torch.Tensor | None, args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """Images/s and peak MiB of the bare training step (DDPM Algorithm 1 + AdamW), with fresh timesteps and noise
    each step as in the training loop. The optimizer lives only here, so its state is not in later peaks."""
    optimizer = torch.optim.AdamW(parameters, lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas),
                                  weight_decay=cfg.train.weight_decay, fused=device.type == "cuda")

    def step() -> None:
        t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), device=device)
        with autocast(device, args.precision):
            loss = diffusion_loss(network, schedule, x0, t, torch.randn_like(x0), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    network.train()
    with PeakMemory(device) as peak:
        seconds = seconds_per_call(step, args.iters, args.warmup, device)
    return x0.shape[0] / seconds, peak.mib


def measure_forward(network: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                    args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """Images/s and peak MiB of denoiser forwards under inference_mode."""
    def forward() -> None:
        with torch.inference_mode(), autocast(device, args.precision):
            network(x, t, y)

    network.eval()
    with PeakMemory(device) as peak:
        seconds = seconds_per_call(forward, args.iters, args.warmup, device)
    return x.shape[0] / seconds, peak.mib


def measure_ddim(network: nn.Module, schedule, cfg: Config, x_T: torch.Tensor, y: torch.Tensor | None,
                 args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """Samples/s and peak MiB of ddpmkit's DDIM sampler around ``network``: a 2-step run warms up (and compiles) the
    sampler's no_grad forward, then one timed run of --ddim-steps steps."""
    options = sampler_options(cfg, "ddim", args.ddim_steps)

    def sample(steps: int) -> None:
        with autocast(device, args.precision):
            sample_ddim(lambda x, t: network(x, t, y), schedule, x_T, **{**options, "steps": steps}, progress=False)

    network.eval()
    if args.warmup:
        sample(min(2, args.ddim_steps))
    with PeakMemory(device) as peak:
        seconds = seconds_per_call(lambda: sample(args.ddim_steps), 1, 0, device)
    return x_T.shape[0] / seconds, peak.mib


MEASUREMENTS = {"train": "train_images_per_s", "forward": "forward_images_per_s", "ddim": "ddim_samples_per_s"}


def measure(network: nn.Module, parameters: list[nn.Parameter], cfg: Config, spec: UNetSpec, batch_size: int,
            args: argparse.Namespace, device: torch.device) -> dict:
    """Training step, denoiser forward and DDIM sampling (those of --measure) of one network at one batch size."""
    schedule = noise_schedule(cfg.diffusion).to(device)
    x, t, y = inputs(spec, batch_size, device, cfg.train.channels_last)
    measured = {}  # name -> (rate, peak MiB)
    if "train" in args.measure:
        measured["train"] = measure_train(network, parameters, schedule, cfg, x, y, args, device)
    if "forward" in args.measure:
        measured["forward"] = measure_forward(network, x, t, y, args, device)
    if "ddim" in args.measure:
        measured["ddim"] = measure_ddim(network, schedule, cfg, torch.randn_like(x), y, args, device)
    return {"batch_size": batch_size, **{MEASUREMENTS[name]: rate for name, (rate, _) in measured.items()},
            **{f"{name}_peak_mib": peak for name, (_, peak) in measured.items()}}


def full_loop_images_per_s(cfg: Config, args: argparse.Namespace, batch_size: int) -> float:
    """Images/s that ``ddpmkit.train.train`` logs over ``iters`` steps after ``warmup`` steps (at least one): data,
    label dropout, autocast, clipping, AdamW and EMA included; checkpoints and evaluations excluded, as train() does."""
    cfg = copy.deepcopy(cfg)
    warm = max(1, args.warmup)
    stop = warm + args.iters
    t = cfg.train
    t.batch_size, t.device, t.precision = batch_size, args.device, args.precision
    t.compile, t.compile_mode = args.compile is not None, args.compile or "default"
    t.steps = stop + 1                        # never "finished", so no final sample grid
    t.log_every = warm                        # the first record holds the warm-up steps
    t.checkpoint_every = t.steps              # 'latest.pt' only at the stop, after the last record
    t.eval_every = t.sample_every = t.fd_every = 0
    cfg.data.download = False
    validate(cfg)
    with tempfile.TemporaryDirectory(prefix="ddpmkit-throughput-") as run_dir, redirect_stdout(sys.stderr):
        train(cfg, run_dir, resume=False, stop_at=stop, progress=False)
        records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    # Each record's images/s covers the steps since the one before: add up their durations after the warm-up.
    timed = [r for r in records if "images_per_s" in r and r["step"] > warm]
    previous = [warm] + [r["step"] for r in timed[:-1]]
    seconds = sum((r["step"] - p) * batch_size / r["images_per_s"] for r, p in zip(timed, previous))
    return (stop - warm) * batch_size / seconds


# -- report ---------------------------------------------------------------------------------------------------------

COLUMNS = [  # (result key, heading)
    ("train_images_per_s", "train img/s"),
    ("train_tflops", "train TFLOP/s"),
    ("forward_images_per_s", "forward img/s"),
    ("forward_tflops", "forward TFLOP/s"),
    ("ddim_samples_per_s", "DDIM samples/s"),
    ("ddim_tflops", "DDIM TFLOP/s"),
    ("train_peak_mib", "train peak MiB"),
    ("forward_peak_mib", "forward peak MiB"),
    ("ddim_peak_mib", "DDIM peak MiB"),
    ("full_loop_images_per_s", "train() img/s"),
]


def add_tflops(result: dict, flops_per_image: int, ddim_steps: int) -> None:
    """Achieved TFLOP/s: training counts 3 forwards (forward + backward), a DDIM sample ``ddim_steps`` forwards."""
    forwards = {"train": 3, "forward": 1, "ddim": ddim_steps}
    for name, key in MEASUREMENTS.items():
        if result.get(key) is not None:
            result[f"{name}_tflops"] = forwards[name] * flops_per_image * result[key] / 1e12


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown_table(results: list[dict], ddim_steps: int) -> str:
    """One row per system and batch size, then a ddpmkit/diffusers ratio row; columns without values are left out."""
    columns = [(k, h.replace("DDIM", f"DDIM-{ddim_steps}")) for k, h in COLUMNS
               if any(r.get(k) is not None for r in results)]
    rows = []
    for batch_size in sorted({r["batch_size"] for r in results}):
        by_system = {r["system"]: r for r in results if r["batch_size"] == batch_size}
        rows += [[name, str(batch_size)] + [fmt(r.get(k)) for k, _ in columns] for name, r in by_system.items()]
        if {"ddpmkit", "diffusers"} <= by_system.keys():
            ours, theirs = by_system["ddpmkit"], by_system["diffusers"]
            rows.append(["ddpmkit/diffusers", str(batch_size)] +
                        [f"{ours[k] / theirs[k]:.2f}" if ours.get(k) and theirs.get(k) else "-" for k, _ in columns])
    header = ["system", "batch"] + [h for _, h in columns]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # the system name left-aligned, numbers right-aligned
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    separator = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator] + [line(row) for row in rows])


def cpu_model() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The ddpmkit commit measured, with '+dirty' when the working tree has changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def machine_info(device: torch.device) -> dict:
    try:
        diffusers_version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        diffusers_version = None
    info = {
        "command": shlex.join(sys.orig_argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ddpmkit_commit": git_commit(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers_version,
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                    fp32_matmul=torch.backends.cuda.matmul.fp32_precision,
                    fp32_conv=torch.backends.cudnn.conv.fp32_precision)
    return info


# -- command line ---------------------------------------------------------------------------------------------------

def batch_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 32 or 128,512, got {text!r}")
    return sizes


def choices_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A comma-separated subset of ``allowed``, for argparse."""
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
        return names
    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=list(PRESETS), help="the U-Net and recipe to measure")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override the preset, as in 'ddpmkit train' (e.g. model.base_channels=64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, fp32 weights")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=[32], help="comma-separated, e.g. 128,512")
    parser.add_argument("--iters", type=int, default=20, help="timed training steps and forwards per batch size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    parser.add_argument("--ddim-steps", type=int, default=50, help="network evaluations per DDIM sample")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure everything this many times, alternating the systems; report the medians")
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                        help="torch.compile both networks, in MODE (default: 'default'; reduce-overhead = CUDA "
                        "graphs)")
    parser.add_argument("--skip-diffusers", action="store_true", help="measure ddpmkit only (= --systems ddpmkit)")
    parser.add_argument("--systems", type=choices_list(SYSTEMS), default=list(SYSTEMS),
                        help="comma-separated systems to measure, in this order (default ddpmkit,diffusers)")
    parser.add_argument("--measure", type=choices_list(tuple(MEASUREMENTS)), default=list(MEASUREMENTS),
                        help="comma-separated: train, forward, ddim (default all three)")
    parser.add_argument("--full-loop", action="store_true",
                        help="also time ddpmkit.train.train (needs the preset's dataset on disk)")
    parser.add_argument("--json", metavar="OUT.json", help="write the results and the machine here")
    args = parser.parse_args()
    if args.skip_diffusers:
        args.systems = [name for name in args.systems if name != "diffusers"]
    if not args.systems:
        parser.error("--systems: nothing left to measure")
    if args.iters < 1 or args.warmup < 0 or args.ddim_steps < 1 or args.repeats < 1:
        parser.error("--iters, --ddim-steps and --repeats must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cfg = resolve_config(args.preset, overrides=args.set)
    spec = model_spec(cfg)
    set_tf32(device, cfg.train.tf32)  # for both systems alike, as train() does (--set train.tf32=false: full fp32)
    if args.ddim_steps > cfg.diffusion.num_timesteps:
        raise SystemExit(f"--ddim-steps {args.ddim_steps} is more than T = {cfg.diffusion.num_timesteps}")
    print(f"{args.preset}: {spec.image_channels}x{spec.image_size}x{spec.image_size}, "
          f"{'class-conditional (' + str(spec.num_classes) + ' classes)' if spec.num_classes else 'unconditional'}; "
          f"{device}, {args.precision}, {torch.get_num_threads()} threads, "
          f"{'channels_last' if cfg.train.channels_last else 'contiguous'}"
          f"{f', compiled ({args.compile})' if args.compile else ''}")

    systems, networks, flops_of = {}, {}, {}
    for name, build in build_systems(spec, args.systems).items():
        torch.manual_seed(0)
        model = build().to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        flops = flops_of[name] = forward_flops(model, spec, device)
        systems[name] = {"parameters": count_parameters(model), "forward_gflop_per_image": flops / 1e9}
        print(f"{name:>9}: {systems[name]['parameters']:,} parameters, {flops / 1e9:.3f} GFLOP per image forward")
        networks[name] = (StepMarked(torch.compile(model, mode=args.compile)) if args.compile else model, model)

    # Repeats alternate the systems (A B A B ...), so that a slow spell of a shared machine hits both alike; each
    # number reported is the median over the repeats, and the JSON keeps every repeat.
    runs: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for batch_size in args.batch_sizes:
            for name, (network, model) in networks.items():
                result = measure(network, list(model.parameters()), cfg, spec, batch_size, args, device)
                if args.full_loop and name == "ddpmkit":
                    result["full_loop_images_per_s"] = full_loop_images_per_s(cfg, args, batch_size)
                runs.setdefault((name, batch_size), []).append(result)
                rates = ", ".join(f"{key} {value:,.1f}" for key, value in result.items()
                                  if key.endswith("_per_s") and value is not None)
                print(f"{f'repeat {repeat + 1}/{args.repeats}, ' if args.repeats > 1 else ''}{name}, batch "
                      f"{batch_size}: {rates}", flush=True)  # as it goes: a run cut short keeps what it measured
    results = []
    for (name, batch_size), repeats in runs.items():
        result = {"system": name, "batch_size": batch_size, "repeats": repeats}
        for key in repeats[0]:
            if key != "batch_size":
                values = [r[key] for r in repeats]
                result[key] = None if None in values else statistics.median(values)
        add_tflops(result, flops_of[name], args.ddim_steps)
        results.append(result)
    del networks
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    print()
    print(markdown_table(results, args.ddim_steps))
    # ru_maxrss (KiB on Linux) never goes down, so on the CPU it is one number for the whole run, not per row.
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cpu":
        print(f"\npeak memory per row is measured on CUDA only; this process peaked at {peak_rss_mib:,.0f} MiB RSS "
              f"over all systems and batch sizes")
    if args.json:
        report = {"preset": args.preset, "overrides": args.set, "device": args.device, "precision": args.precision,
                  "compile": args.compile, "channels_last": cfg.train.channels_last, "iters": args.iters,
                  "repeats": args.repeats,
                  "warmup": args.warmup, "ddim_steps": args.ddim_steps, "unet": vars(spec),
                  "diffusers_config": diffusers_config(spec) if "diffusers" in systems else None,
                  "systems": systems, "results": results, "process_peak_rss_mib": peak_rss_mib,
                  "machine": machine_info(device)}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
