"""A trained model through diffusers and back: how far diffusers' outputs and samples are from ddpmkit's.

    python benchmarks/interop_check.py --checkpoint runs/quick --json docs/interop_quick_cpu.json \
        --grid docs/images/interop_quick_diffusers.png

1. ``ddpmkit export`` writes the model as a diffusers folder (timed);
2. diffusers' ``UNet2DModel.from_pretrained`` loads it, and both networks run on the same inputs (x_t = q(x_t | x_0)
   of real test images at timesteps across [0, T)): the largest absolute and relative output difference;
3. both draw the same samples from the same starting noise: diffusers' DDIMScheduler in a plain loop (the model
   card's example, with guidance for a conditional model) against ddpmkit's ``ddim`` sampler, and for an
   unconditional model also diffusers' own DDPMPipeline against ddpmkit's ``ddpm``: the largest pixel difference;
4. ``DiffusionSampler.from_diffusers`` reads the folder back (timed) and gives bit-identical outputs.
Prints a table; writes JSON and, with --grid, diffusers' samples above ddpmkit's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ddpmkit.data import load_images, to_model_range
from ddpmkit.export import export
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.viz import save_grid
from throughput import machine_info  # benchmarks/, beside this script


def diffusers_ddim(unet, scheduler, x_T, labels, null, guidance, steps):
    """The model card's diffusers loop: DDIMScheduler, classifier-free guidance on the raw output."""
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            if labels is None:
                out = unet(x, t).sample
            else:
                both = unet(x.repeat(2, 1, 1, 1), t, class_labels=torch.cat([labels, torch.full_like(labels, null)]))
                cond, uncond = both.sample.chunk(2)
                out = cond + guidance * (cond - uncond)
            x = scheduler.step(out, t, x, use_clipped_model_output=True).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a ddpmkit checkpoint or run directory")
    p.add_argument("--images", type=int, default=40, help="samples per comparison (default 40)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance weight for a conditional model")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--grid", help="write diffusers' samples (top) above ddpmkit's (bottom) here")
    args = p.parse_args()
    import diffusers

    torch.manual_seed(0)
    ddpmkit = DiffusionSampler(args.checkpoint, device="cpu", precision="fp32")
    folder = Path(tempfile.mkdtemp()) / "exported"
    start = time.perf_counter()
    export(args.checkpoint, folder)
    export_s = time.perf_counter() - start
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")

    # Network outputs on noised real images, t spread over [0, T).
    real = to_model_range(load_images(ddpmkit.config.data, "test").images[: args.images])
    T = ddpmkit.schedule.num_timesteps
    t = torch.linspace(0, T - 1, len(real)).round().long()
    x_t = ddpmkit.schedule.q_sample(real, t, torch.randn_like(real))
    y = torch.arange(len(real)) % (ddpmkit.model.spec.num_classes + 1) if ddpmkit.is_conditional else None
    with torch.no_grad():
        ours, theirs = ddpmkit.model(x_t, t, y), unet(x_t, t, class_labels=y).sample
    output_abs = (ours - theirs).abs().max().item()
    output_rel = output_abs / ours.abs().max().item()

    # Samples from the same noise.
    x_T, _ = ddpmkit.noise(list(range(args.images)))
    labels = torch.arange(args.images) % len(ddpmkit.class_names) if ddpmkit.is_conditional else None
    guidance = args.guidance if ddpmkit.is_conditional else 0.0
    mine = ddpmkit.to_images(ddpmkit.run(x_T, labels=labels, guidance=guidance, sampler="ddim", steps=args.steps,
                                         progress=False))
    null = ddpmkit.model.spec.num_classes
    theirs_images = diffusers_ddim(unet, scheduler, x_T, labels, null, guidance, args.steps)
    ddim_pixels = (mine - theirs_images).abs().max().item() * 255
    results = {"checkpoint": args.checkpoint, "parameters": sum(p.numel() for p in unet.parameters()),
               "export_s": round(export_s, 2), "network_max_abs_diff": output_abs,
               "network_max_rel_diff": output_rel, "ddim_steps": args.steps, "guidance": guidance,
               "ddim_max_pixel_diff_of_255": ddim_pixels}
    if not ddpmkit.is_conditional:
        seeds = list(range(8))
        pipe = diffusers.DDPMPipeline.from_pretrained(folder)
        theirs_ddpm = pipe(batch_size=8, generator=[torch.Generator().manual_seed(s) for s in seeds],
                           num_inference_steps=T, output_type="np").images
        mine_ddpm = ddpmkit.generate(seeds, sampler="ddpm", progress=False).permute(0, 2, 3, 1).numpy()
        results["ddpm_pipeline_max_pixel_diff_of_255"] = float(abs(mine_ddpm - theirs_ddpm).max() * 255)

    start = time.perf_counter()
    again = DiffusionSampler.from_diffusers(folder, device="cpu", precision="fp32")
    results["import_s"] = round(time.perf_counter() - start, 2)
    with torch.no_grad():
        results["reimported_identical"] = bool(torch.equal(again.model(x_t, t, y), ours))
    results["machine"] = {**machine_info(torch.device("cpu")), "diffusers": diffusers.__version__}

    width = max(len(k) for k in results)
    for key, value in results.items():
        if key != "machine":
            print(f"{key:<{width}}  {value:.3g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.grid:
        n = min(args.images, 10 * (args.images // 10)) or args.images
        save_grid(torch.cat([theirs_images[:n], mine[:n]]), args.grid, nrow=10)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
