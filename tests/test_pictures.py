"""Every picture command writes a readable file of the expected size and frame count."""
import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.pictures import slerp
from ddpmkit.sampling import DiffusionSampler


def test_slerp_ends_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    # Independent Gaussian vectors are nearly orthogonal with nearly equal norms: slerp keeps the norm, a straight
    # line would shrink it by about 1/sqrt(2) half-way.
    assert slerp(a, b, 0.5).norm() / a.norm() == pytest.approx(1.0, abs=0.05)
    assert ((a + b) / 2).norm() / a.norm() < 0.8


def test_sample_all_classes_writes_one_labelled_row_per_class(tiny_conditional_checkpoint, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "all", "--num-samples", "3",
                 "--sampler", "ddim", "--steps", "3", "--guidance", "1.5", "--output-dir", str(out),
                 "--no-progress"]) == 0
    npz = np.load(out / "samples.npz")
    assert npz["arr_0"].shape == (30, 8, 8, 1)
    assert list(npz["labels"][:4]) == [0, 0, 0, 1] and list(npz["seeds"][:4]) == [0, 1, 2, 0]
    grid = Image.open(out / "grid.png")
    assert grid.height >= 10 * 8 and grid.width > 3 * 8  # ten rows of 8 px images, enlarged, with a label margin
    assert (out / "images" / "class_9_seed_00002.png").is_file()


def test_sampling_errors(tiny_conditional_checkpoint, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "cat",
                 "--output-dir", str(tmp_path)]) == 2
    assert "unknown class 'cat'; this model knows: 0, 1, 2" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--guidance", "2",
                 "--output-dir", str(tmp_path)]) == 2
    assert "guidance needs classes" in capsys.readouterr().err


def test_unconditional_sampling_of_a_conditional_model_uses_the_null_label(tiny_conditional_checkpoint):
    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    plain = sampler.sample(2, sampler="ddim", steps=3, progress=False)
    null = sampler.sample(2, sampler="ddim", steps=3, labels=[10, 10], progress=False)
    assert torch.equal(plain, null)


def test_interpolate_noise_and_classes(tiny_conditional_checkpoint, tmp_path):
    for extra in (["--between", "noise", "--class", "1"], ["--between", "classes", "--class", "0", "--to-class", "1"]):
        out = tmp_path / f"{extra[1]}.png"
        assert main(["interpolate", "--checkpoint", str(tiny_conditional_checkpoint), "--points", "5", "--steps", "3",
                     "--output", str(out), "--no-progress", *extra]) == 0
        image = Image.open(out)
        assert image.width > 5 * 10 and image.height >= 10  # five 8 px images + padding, enlarged, plus a label


def test_strip_has_four_rows_of_frames(tiny_conditional_checkpoint, tmp_path):
    out = tmp_path / "strip.png"
    assert main(["strip", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "1", "--frames", "4",
                 "--ddim-steps", "3", "--output", str(out), "--no-progress"]) == 0
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[1] > 4 * 10 and image.shape[0] > 4 * 10


def test_animate_writes_one_gif_per_class_with_the_frame_count(tiny_conditional_checkpoint, tmp_path):
    out = tmp_path / "gifs"
    assert main(["animate", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "0,1", "--per-class", "2",
                 "--frames", "5", "--duration", "1", "--output-dir", str(out), "--no-progress"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["all.gif", "class_0_0.gif", "class_1_1.gif"]
    for name in names:
        gif = Image.open(out / name)
        assert gif.n_frames == 5 and gif.info["loop"] == 0


def test_plot_schedule(tmp_path):
    out = tmp_path / "schedules.png"
    assert main(["plot-schedule", "--output", str(out)]) == 0
    assert Image.open(out).size == (1200, 480)


def test_frames_are_evenly_spaced_from_noise_to_sample(tiny_conditional_checkpoint):
    from ddpmkit.pictures import record_denoising

    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    for frames in (3, 8):  # fewer and more frames than the run's 3 + 1 states
        xs, x0s = record_denoising(sampler, "ddim", 3, frames, [4], None, 0.0, progress=False)
        assert len(xs) == len(x0s) == frames
        x_T, _ = sampler.noise([4])
        assert torch.allclose(xs[0], sampler.to_images(x_T))         # starts at pure noise
        assert torch.equal(xs[-1], sampler.sample_ddim(1, steps=3, seed=4, progress=False))  # ends at the sample
        assert torch.equal(x0s[-1], xs[-1])


def test_animation_keeps_its_timing_with_few_steps(tiny_conditional_checkpoint, tmp_path):
    # 8 frames of a 3-step run repeat states; the GIF merges identical neighbours but keeps the total duration.
    assert main(["animate", "--checkpoint", str(tiny_conditional_checkpoint), "--sampler", "ddim", "--steps", "3",
                 "--frames", "8", "--duration", "2", "--hold", "0.5", "--per-class", "2", "--output-dir",
                 str(tmp_path), "--no-progress"]) == 0
    gif = Image.open(tmp_path / "unconditional.gif")
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert gif.n_frames == 4 and sum(durations) == pytest.approx(2500, abs=10)


def test_repeated_classes_get_one_label_per_row_and_bad_counts_are_errors(tiny_conditional_checkpoint, tmp_path,
                                                                         capsys):
    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    images, labels = sampler.sample_classes([1, 0, 1], 2, sampler="ddim", steps=2, progress=False)
    assert labels.tolist() == [1, 1, 0, 0, 1, 1] and len(images) == 6
    assert sampler.sample_classes(3, 1, sampler="ddim", steps=2, progress=False)[1].tolist() == [3]
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "1", "--num-samples", "0",
                 "--output-dir", str(tmp_path)]) == 2
    assert "--num-samples: must be a whole number >= 1" in capsys.readouterr().err
    assert main(["strip", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "all",
                 "--output", str(tmp_path / "s.png")]) == 2
    assert "one class at a time" in capsys.readouterr().err


def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path):
    # Regression: plot_loss_curve (called at the end of every training run) and plot-schedule switched pyplot to Agg,
    # so a notebook that trained a model showed no more inline figures.
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); from ddpmkit.viz import plot_noise_schedules; "
            f"plot_noise_schedules({str(tmp_path / 's.png')!r}, 50); print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg" and (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.parametrize("sampler_name, steps, options", [
    ("ddpm", None, {}), ("ddim", 4, {"eta": 0.5}), ("deterministic", 3, {}), ("dpm++2m", 4, {}), ("dpm++3m", 5, {}),
    ("sde-dpm++2m", 4, {}), ("heun", 3, {}), ("heun", 4, {"churn": 1.0}), ("unipc", 4, {}),
    ("unipc", 5, {"order": 1}), ("unipc", 5, {"order": 3, "variant": "bh1"}), ("ddpm", 4, {"spacing": "karras"}),
    ("dpm++2m", 6, {"spacing": "logsnr"}), ("ddim", 4, {"spacing": "leading", "threshold": 0.9}),
    ("deterministic", 5, {"spacing": "linspace"})])
def test_count_steps_is_the_number_of_on_step_calls(tiny_conditional_checkpoint, sampler_name, steps, options):
    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    calls = []
    x_T, noise = sampler.noise([0, 1])
    sampler.run(x_T, noise, sampler=sampler_name, steps=steps, on_step=lambda t, x, x0: calls.append(t),
                progress=False, **options)
    assert sampler.count_steps(sampler_name, steps, **options) == len(calls) > 0


def test_recording_keeps_only_the_frames_it_shows(tiny_conditional_checkpoint):
    """A 3-frame recording of all T = 10 DDPM steps holds a few states at a time, not all of them (it kept every
    step before, so memory grew with T: 1000 steps of 64 CelebA-size images are gigabytes)."""
    import weakref

    from ddpmkit.pictures import record_denoising

    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    run, alive = sampler.run, []

    def watched_run(*args, on_step, **kwargs):
        refs = []

        def watch(t, x, x0):
            on_step(t, x, x0)
            refs.append(weakref.ref(x))
            alive.append(sum(r() is not None for r in refs))
        return run(*args, on_step=watch, **kwargs)

    sampler.run = watched_run
    xs, _ = record_denoising(sampler, "ddpm", None, 3, [4], None, 0.0, progress=False)
    assert len(alive) == 10 and max(alive) <= 3
    sampler.run = run
    assert torch.equal(xs[-1], sampler.sample_ancestral(1, seed=4, progress=False))
