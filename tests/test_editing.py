"""Inpainting and image-to-image (ddpmkit.editing): the known pixels kept exactly, RePaint as diffusers runs it,
RePaint's resampling against the closed-form conditional of Gaussian data, SDEdit's ends, and one-line refusals."""
from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.editing.masks import MASK_SHAPES, masks_for, shape_mask
from ddpmkit.editing.repaint import count_evaluations, edit_sample, repaint_positions
from ddpmkit.errors import DdpmkitError
from ddpmkit.paths import DDPMPath
from ddpmkit.samplers import ImageNoise
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.schedule import NoiseSchedule, linear_beta_schedule
from test_formats_diffusers import random_checkpoint


def test_named_masks_cover_what_their_names_say():
    right, centre = shape_mask("right", 8), shape_mask("centre", 8)
    assert right[..., 4:].eq(1).all() and right[..., :4].eq(0).all()
    assert centre.sum() == 16 and centre[..., 2:6, 2:6].eq(1).all()
    assert torch.equal(shape_mask("center", 8), centre)
    boxes = [shape_mask("random-boxes", 16, seed) for seed in (0, 1)]
    assert not torch.equal(*boxes) and torch.equal(boxes[0], shape_mask("random-boxes", 16, 0))
    for name in MASK_SHAPES:
        mask = masks_for(name, 3, 16, [0, 1, 2])
        assert mask.shape == (3, 1, 16, 16) and 0 < float(mask.mean()) < 1


def test_a_png_mask_reads_white_as_generate(tmp_path):
    pixels = np.zeros((8, 8), np.uint8)
    pixels[:, 6:] = 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    mask = masks_for(str(tmp_path / "mask.png"), 2, 8, [0, 1])
    assert mask.shape == (2, 1, 8, 8) and mask[..., 6:].eq(1).all() and mask[..., :6].eq(0).all()


@pytest.mark.parametrize("steps, jump_length, jump_n_sample", [(10, 1, 1), (10, 2, 3), (20, 5, 4), (25, 5, 5),
                                                               (12, 4, 2), (9, 3, 10)])
def test_repaint_schedule_is_diffusers_repaintscheduler_schedule(steps, jump_length, jump_n_sample):
    """diffusers lists timesteps t (a step at t, or a jump back up to t); after either the state is at position
    steps - t. Our positions must be the same walk."""
    T = 100 * steps
    scheduler = diffusers.RePaintScheduler(num_train_timesteps=T)
    scheduler.set_timesteps(steps, jump_length, jump_n_sample)
    theirs = [0] + [steps - int(t) // (T // steps) for t in scheduler.timesteps]
    assert repaint_positions(steps, jump_length, jump_n_sample) == theirs
    ups = count_evaluations(theirs)
    assert ups == steps + (jump_n_sample - 1) * jump_length * len(range(steps, jump_length, -jump_length))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_inpainting_is_diffusers_repaintpipeline_on_the_same_model_and_noise(tiny_idx_root, tmp_path, eta):
    """RePaintPipeline (eps prediction; with as many steps as T, where its noising back is one forward step) against
    ddpmkit's RePaint on the exported model, per image with the same seed. Clipping off on both sides (diffusers
    clips x_0 but keeps the unclipped eps in its step)."""
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt")
    sampler = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    T = sampler.schedule.num_timesteps
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "hub")]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "hub" / "unet")
    scheduler = diffusers.RePaintScheduler(num_train_timesteps=T, clip_sample=False,
                                           trained_betas=sampler.schedule.betas_float64.numpy())
    torch.testing.assert_close(scheduler.betas.double(), sampler.schedule.betas_float64, rtol=1e-6, atol=0)
    pipeline = diffusers.RePaintPipeline(unet=unet, scheduler=scheduler)
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 1, 8, 8, generator=g)
    mask = masks_for("random-boxes", 2, 8, [3, 4])
    ours = sampler.inpaint(images, mask, method="repaint", steps=T, jump_length=2, jump_n_sample=3, eta=eta,
                           clip=False, seed=7, progress=False)
    for i in range(2):
        theirs = pipeline(images[i: i + 1] * 2 - 1, 1 - mask[i: i + 1], num_inference_steps=T, eta=eta,
                          jump_length=2, jump_n_sample=3, generator=[torch.Generator().manual_seed(7 + i)],
                          output_type="np").images
        np.testing.assert_allclose(ours[i].permute(1, 2, 0).numpy(), theirs[0], atol=1e-4)


@pytest.mark.parametrize("objective", ["ddpm", "flow", "edm"])
@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_known_pixels_come_back_bit_for_bit(tiny_idx_root, tmp_path, objective, method):
    diffusion = {"objective": objective} if objective != "ddpm" else {"prediction": "v"}
    sampler = DiffusionSampler(random_checkpoint(tiny_idx_root, tmp_path / "m.pt", classes=2, diffusion=diffusion),
                               device="cpu")
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    out = sampler.inpaint(images, "centre", method=method, steps=6, jump_length=2 if method == "repaint" else None,
                          jump_n_sample=2 if method == "repaint" else None, completions=2, labels=[0, 1, 1],
                          guidance=1.5, progress=False)
    mask = shape_mask("centre", 8).bool()
    originals = images.float().repeat_interleave(2, 0) / 255
    assert out.shape == (6, 1, 8, 8)
    assert torch.equal(out[:, ~mask], originals[:, ~mask])
    assert not torch.equal(out[:, mask], originals[:, mask])
    assert not torch.equal(out[0], out[1])  # two completions of one image differ


def test_a_result_depends_only_on_its_seed_not_on_the_batch(tiny_idx_root, tmp_path):
    sampler = DiffusionSampler(random_checkpoint(tiny_idx_root, tmp_path / "m.pt"), device="cpu")
    images = torch.rand(4, 1, 8, 8)
    kwargs = dict(method="repaint", steps=6, jump_length=2, jump_n_sample=2, completions=2, seed=3, progress=False)
    together = sampler.inpaint(images, "left", batch_size=8, **kwargs)
    apart = sampler.inpaint(images, "left", batch_size=3, **kwargs)
    torch.testing.assert_close(together, apart, atol=1e-6, rtol=0)


def _gaussian_pair_denoiser(schedule: NoiseSchedule, cov: torch.Tensor):
    """The exact eps-prediction for data ~ N(0, cov) over the two pixels of a 1x2 image:
    E[x_0 | x_t] = sqrt(abar) cov (abar cov + (1 - abar) I)^-1 x_t."""
    def model(x, t):
        a = schedule.alphas_cumprod_float64[t].reshape(-1, 1, 1)
        xt = x.reshape(-1, 2, 1).double()
        x0 = a.sqrt() * cov @ torch.linalg.solve(a * cov + (1 - a) * torch.eye(2, dtype=torch.float64), xt)
        return ((xt - a.sqrt() * x0) / (1 - a).sqrt()).reshape(x.shape).float()
    return model


def test_repaints_resampling_brings_the_generated_pixel_to_its_exact_conditional():
    """Data N(0, [[1, rho], [rho, 1]]), pixel 0 known = v: pixel 1 | v ~ N(rho v, 1 - rho^2). Replacement only
    sees v through noise and lands far from rho v (Lugmayr et al. 2022, §4.2: the known part is not harmonised);
    RePaint at the same network evaluations closes most of the gap."""
    rho, v, n = 0.9, 1.5, 4000
    schedule = NoiseSchedule(linear_beta_schedule(1000, 1e-4, 0.02))
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    path, model = DDPMPath(schedule, "eps"), _gaussian_pair_denoiser(schedule, cov)
    known = torch.zeros(n, 1, 1, 2)
    known[..., 0] = v
    mask = torch.zeros(n, 1, 1, 2)
    mask[..., 1] = 1
    repaint = dict(steps=50, jump_length=5, jump_n_sample=10)
    evaluations = count_evaluations(repaint_positions(**repaint))
    results = {}
    for name, options in {"replace": dict(steps=evaluations), "repaint": repaint}.items():
        torch.manual_seed(0)
        out = edit_sample(path, model, torch.randn(n, 1, 1, 2), noise=ImageNoise(), known=known, mask=mask,
                          progress=False, **options)
        assert torch.equal(out[..., 0], known[..., 0])
        results[name] = out[..., 1].flatten()
    gap = {name: abs(float(x.mean()) - rho * v) for name, x in results.items()}
    assert gap["replace"] > 0.3  # measured 0.42: the known bias, far beyond the 0.01 of sampling error
    assert gap["repaint"] < gap["replace"] / 3
    assert abs(float(results["repaint"].var()) - (1 - rho**2)) < abs(float(results["replace"].var()) - (1 - rho**2))


def test_sdedit_keeps_gaussian_data_gaussian():
    """SDEdit with the exact denoiser and DDPM steps at full resolution is the forward process then its reverse:
    samples of the data stay samples of the data (mean, covariance), whatever the strength."""
    rho, n = 0.8, 4000
    schedule = NoiseSchedule(linear_beta_schedule(1000, 1e-4, 0.02))
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    path, model = DDPMPath(schedule, "eps"), _gaussian_pair_denoiser(schedule, cov)
    torch.manual_seed(0)
    x0 = (torch.linalg.cholesky(cov).float() @ torch.randn(n, 2, 1)).reshape(n, 1, 1, 2)
    steps, start = 200, 100  # strength 0.5
    alpha, sigma = (v.float() for v in path.alpha_sigma(start / steps))
    x = alpha * x0 + sigma * torch.randn_like(x0)
    out = edit_sample(path, model, x, steps=steps, start=start, noise=ImageNoise(), progress=False).reshape(n, 2)
    torch.testing.assert_close(torch.cov(out.T.double()), cov, atol=0.08, rtol=0)
    assert out.mean(0).abs().max() < 0.06
    changed = (out - x0.reshape(n, 2)).pow(2).mean()
    assert changed > 0.1  # it did move the samples


def test_sdedit_at_strength_zero_returns_the_images_and_at_one_ignores_them(tiny_idx_root, tmp_path):
    sampler = DiffusionSampler(random_checkpoint(tiny_idx_root, tmp_path / "m.pt"), device="cpu")
    images = torch.rand(2, 1, 8, 8)
    assert torch.equal(sampler.edit(images, 0.0, progress=False), images)
    new = [sampler.edit(torch.rand(2, 1, 8, 8), 1.0, seed=4, steps=10, progress=False) for _ in range(2)]
    torch.testing.assert_close(new[0], new[1], atol=0.02, rtol=0)  # at u = 0 almost nothing of the image is left
    halfway = sampler.edit(images, 0.5, seed=4, steps=10, progress=False)
    assert halfway.shape == images.shape and not torch.equal(halfway, images)


def test_the_inversion_route_gives_the_image_back_without_a_class_change(tiny_idx_root, tmp_path):
    sampler = DiffusionSampler(random_checkpoint(tiny_idx_root, tmp_path / "m.pt", classes=2), device="cpu")
    images = 0.2 + 0.6 * torch.rand(2, 1, 8, 8)
    back = sampler.edit(images, method="invert", labels=[0, 1], source_labels=[0, 1], steps=5, refine=30,
                        progress=False)
    torch.testing.assert_close(back, images, atol=1e-4, rtol=0)
    swapped = sampler.edit(images, method="invert", labels=[1, 0], source_labels=[0, 1], steps=5, refine=30,
                           progress=False)
    assert (swapped - images).abs().max() > 0.01


@pytest.mark.parametrize("call, message", [
    (lambda s, x: s.inpaint(x, torch.zeros(8, 8)), "all black"),
    (lambda s, x: s.inpaint(x, torch.ones(8, 8)), "all white"),
    (lambda s, x: s.inpaint(x, torch.zeros(6, 6)), "(H, W)"),
    (lambda s, x: s.inpaint(x, "diagonal"), "unknown mask"),
    (lambda s, x: s.inpaint(x.repeat(1, 3, 1, 1), "left"), "channels"),
    (lambda s, x: s.inpaint(x[..., :6, :6], "left"), "resize them to 8x8"),
    (lambda s, x: s.inpaint(x, "left", sampler_name="dpm++2m"), "ddpm or ddim"),
    (lambda s, x: s.inpaint(x, "left", method="repaint", steps=4, jump_length=4, jump_n_sample=2), "smaller"),
    (lambda s, x: s.inpaint(x, "left", method="replace", jump_n_sample=3), "RePaint's resampling"),
    (lambda s, x: s.inpaint(x, "left", eta=1.5), "eta"),
    (lambda s, x: s.inpaint(x, "left", method="replace", steps=11), "between 1 and T=10"),
    (lambda s, x: s.edit(x, 0.5, steps=20), "between 1 and T=10"),
    (lambda s, x: s.edit(x, 1.5), "strength"),
    (lambda s, x: s.edit(x, -0.1), "strength"),
    (lambda s, x: s.edit(x, float("nan")), "strength"),
    (lambda s, x: s.edit(x * 3), "[0, 1]"),
])
def test_bad_input_is_refused_in_one_line(tiny_idx_root, tmp_path, call, message):
    sampler = DiffusionSampler(random_checkpoint(tiny_idx_root, tmp_path / "m.pt"), device="cpu")
    with pytest.raises(DdpmkitError, match=None) as raised:
        call(sampler, torch.rand(2, 1, 8, 8))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def _pictures(folder, count: int, size: int = 8, mode: str = "L"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(folder / f"p{i}.png")
    return folder


def test_inpaint_command_writes_grid_pictures_and_npz_keeping_known_pixels(tiny_idx_root, tmp_path):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "m.pt")
    inputs = _pictures(tmp_path / "in", 2)
    assert main(["inpaint", "--checkpoint", str(checkpoint), "--input", str(inputs), "--mask", "right",
                 "--steps", "4", "--jump-length", "2", "--jump-n-sample", "2", "--completions", "3",
                 "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "images").iterdir())[:3] == [f"p0_seed_0000{j}.png" for j in range(3)]
    results = np.load(out / "results.npz")["arr_0"]
    originals = np.stack([np.asarray(Image.open(inputs / f"p{i}.png")) for i in range(2)]).repeat(3, 0)
    assert results.shape == (6, 8, 8, 1)
    assert np.array_equal(results[:, :, :4, 0], originals[:, :, :4])
    with Image.open(out / "grid.png") as grid:
        assert grid.width > grid.height  # a row per picture: before, mask, three completions


def test_edit_command_from_dataset_pictures(tiny_idx_root, tmp_path):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "m.pt", classes=2)
    assert main(["edit", "--checkpoint", str(checkpoint), "--dataset-images", "2", "--class", "1", "--guidance",
                 "1", "--strength", "0.5", "--steps", "4", "--completions", "2", "--output-dir",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    saved = np.load(tmp_path / "out" / "results.npz")
    assert saved["arr_0"].shape == (4, 8, 8, 1) and saved["labels"].tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("make, args, message", [
    (lambda d: _pictures(d, 1, mode="RGB"), ["--mask", "left"], "channel"),
    (lambda d: _pictures(d, 1, size=10), ["--mask", "left"], "resize it to 8x8"),
    (lambda d: _pictures(d, 1), ["--mask", "MASK10"], "give a mask of that size"),
    (lambda d: _pictures(d, 1), ["--mask", "BLACK"], "all black"),
    (lambda d: _pictures(d, 1), ["--mask", "WHITE"], "all white"),
    (lambda d: d, ["--mask", "left"], "does not exist"),
])
def test_bad_editing_input_is_one_line_and_writes_nothing(tiny_idx_root, tmp_path, capsys, make, args, message):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "m.pt")
    for name, size, value in (("MASK10", 10, 255), ("BLACK", 8, 0), ("WHITE", 8, 255)):
        Image.fromarray(np.full((size, size), value, np.uint8)).save(tmp_path / f"{name}.png")
    args = [str(tmp_path / f"{a}.png") if a in ("MASK10", "BLACK", "WHITE") else a for a in args]
    inputs = make(tmp_path / "in")
    assert main(["inpaint", "--checkpoint", str(checkpoint), "--input", str(inputs), *args,
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_invert_route_refuses_several_completions(tiny_idx_root, tmp_path, capsys):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "m.pt", classes=2)
    assert main(["edit", "--checkpoint", str(checkpoint), "--dataset-images", "1", "--method", "invert",
                 "--completions", "2", "--output-dir", str(tmp_path / "out")]) == 2
    assert "deterministic" in capsys.readouterr().err
