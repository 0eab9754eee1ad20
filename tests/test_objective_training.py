"""Training and sampling models of the continuous objectives (diffusion.objective = edm, flow) end to end: the loop,
its resumption, the held-out loss, the samplers through DiffusionSampler and the command line, and what is refused."""
import json
from pathlib import Path

import pytest
import torch

from ddpmkit.checkpoint import read_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import ConfigError, config_from_dict, resolve_config
from ddpmkit.errors import DdpmkitError
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.train import train

from conftest import tiny_config_dict

OBJECTIVES = ["edm", "flow"]


def _config(root, objective: str, **train_changes):
    d = tiny_config_dict(root)
    d["diffusion"] = {"objective": objective}
    d["model"]["class_conditional"] = True
    d["train"].update({"steps": 24, "log_every": 8, "eval_every": 8, "checkpoint_every": 12, **train_changes})
    return config_from_dict(d)


@pytest.fixture(scope="module", params=OBJECTIVES)
def trained(request, tiny_idx_root, tmp_path_factory):
    """(objective, run directory) of a tiny conditional model trained 24 steps."""
    run = tmp_path_factory.mktemp(f"run_{request.param}")
    train(_config(tiny_idx_root, request.param), run, progress=False)
    return request.param, run


def test_the_loss_falls_and_the_held_out_loss_is_measured(trained):
    _, run = trained
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    heldout = [r["heldout_loss"] for r in records if "heldout_loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]  # learning, from the first interval to the last
    assert len(heldout) == 3 and heldout[-1] < heldout[0] and all(map(torch.isfinite, torch.tensor(heldout)))


def test_a_resumed_run_reaches_the_same_weights(trained, tiny_idx_root, tmp_path):
    objective, run = trained
    train(_config(tiny_idx_root, objective), tmp_path, stop_at=12, progress=False)
    resumed = read_checkpoint(train(_config(tiny_idx_root, objective), tmp_path, progress=False))
    straight = read_checkpoint(run / "final.pt")
    for name, tensor in straight["ema"]["model"].items():
        assert torch.equal(tensor, resumed["ema"]["model"][name]), name


def test_every_sampler_of_the_objective_draws_guided_images_deterministically(trained):
    objective, run = trained
    model = DiffusionSampler(run, device="cpu")
    for sampler in ("euler", "heun", "dpm++2m", "dpm++3m", "sde-dpm++2m", "unipc", None):
        images = model.sample(4, sampler=sampler, steps=4, labels=[0, 1, 0, 1], guidance=1.0, progress=False)
        assert images.shape == (4, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
        again = model.sample(4, sampler=sampler, steps=4, labels=[0, 1, 0, 1], guidance=1.0, batch_size=3,
                             progress=False)
        assert torch.allclose(images, again, atol=1e-5)  # per-image seeds: the batch size changes nothing but rounding


def test_what_the_continuous_objectives_do_not_take_is_refused_in_one_line(trained, tmp_path, capsys):
    objective, run = trained
    model = DiffusionSampler(run, device="cpu")
    other_levels = {"edm": "shift", "flow": "rho"}[objective]
    for call, message in [(lambda: model.sample(2, sampler="ddim", progress=False), "not a sampler of"),
                          (lambda: model.sample(2, spacing="karras", progress=False), "spacing: options of ddpm"),
                          (lambda: model.sample(2, **{other_levels: 2.0}, progress=False), "does not apply"),
                          (lambda: model.count_steps("ddpm"), "not a sampler of")]:
        with pytest.raises(DdpmkitError, match=message):
            call()
    if objective == "edm":  # its preconditioning is not part of a UNet2DModel: no diffusers folder
        assert main(["export", "--checkpoint", str(run), "--output", str(tmp_path / "out")]) == 2
        assert "--format safetensors" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_safetensors_export_samples_as_the_checkpoint(trained, tmp_path):
    _, run = trained
    assert main(["export", "--checkpoint", str(run), "--format", "safetensors", "--output",
                 str(tmp_path / "m.safetensors")]) == 0
    options = {"steps": 3, "labels": [1, 0], "progress": False}
    assert torch.equal(DiffusionSampler(tmp_path / "m.safetensors", device="cpu").sample(2, **options),
                       DiffusionSampler(run, device="cpu").sample(2, **options))


def test_the_command_line_samples_with_the_objectives_default(trained, tmp_path, capsys):
    objective, run = trained
    assert main(["sample", "--checkpoint", str(run), "--class", "all", "--num-samples", "2", "--steps", "3",
                 "--output-dir", str(tmp_path), "--no-progress"]) == 0
    expected = "sde-dpm++2m"  # both objectives' default, from the race (docs/race.md)
    assert f"({expected})" in capsys.readouterr().out and (tmp_path / "grid.png").is_file()


def test_objective_presets_and_refusals():
    assert resolve_config("quick_edm").diffusion.objective == "edm"
    assert resolve_config("quick").diffusion.objective == "flow" and resolve_config("quick").train.grid_sampler == ""
    assert resolve_config("quick_ddpm").diffusion.prediction == "v"
    with pytest.raises(ConfigError, match="has its own loss and weighting"):
        resolve_config("quick_ddpm", overrides=["diffusion.objective=flow", "train.grid_sampler="])
    with pytest.raises(ConfigError, match="'ddpm' is not a sampler of edm models"):
        resolve_config("quick_ddpm", overrides=["diffusion.objective=edm", "diffusion.loss_weighting=none"])


def test_evaluate_and_the_in_training_fd_and_grids_draw_with_the_objectives_sampler(trained, tiny_idx_root,
                                                                                   tiny_judge, tmp_path):
    from ddpmkit.evaluate import evaluate

    objective, run = trained
    report = evaluate(run, num_samples=10, steps=3, metrics=("fd", "accuracy"), classifier=tiny_judge,
                      data_root=str(tiny_idx_root), cache_dir=None, progress=False)
    assert report["samples"]["sampler"] == "sde-dpm++2m"
    assert all(map(torch.isfinite, torch.tensor(list(report["metrics"].values()))))
    cfg = _config(tiny_idx_root, objective, steps=4, eval_every=0, fd_every=4, fd_samples=10, fd_steps=3,
                  fd_classifier=str(tiny_judge), sample_every=4, grid_images=4, grid_steps=3)
    train(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    fd = [r for r in records if "fd_mnist_classifier" in r]
    assert fd and fd[0]["fd_sampler"] == report["samples"]["sampler"] and (tmp_path / "samples").is_dir()


@pytest.mark.parametrize("sampler, evaluations", [("euler", 5), ("heun", 9)])
def test_the_denoising_animation_sees_every_network_evaluation(trained, sampler, evaluations):
    # Pictures and the demo record x_t and the predicted x_0 through on_step, once per network evaluation: S levels
    # cost S evaluations with Euler and 2S - 1 with Heun (no correction on the last step, to the final level).
    from ddpmkit.pictures import denoising_frames, record_denoising

    model = DiffusionSampler(trained[1], device="cpu")
    assert model.count_steps(sampler, steps=5) == evaluations
    xs, x0s = record_denoising(model, sampler, 5, 3, [0, 1], torch.tensor([0, 1]), 1.0, progress=False)
    assert len(xs) == len(x0s) == 3 and all(0 <= x.min() and x.max() <= 1 for x in xs + x0s)
    assert torch.equal(xs[-1], model.sample(2, sampler=sampler, steps=5, labels=[0, 1], guidance=1.0, progress=False))
    assert len(denoising_frames(model, [0, 1], cls=0, frames=4, sampler_name=sampler, steps=5, progress=False)) == 4


def test_interpolations_and_strips_use_the_objectives_own_samplers(trained, tmp_path):
    from ddpmkit.pictures import denoising_strip, interpolate_noise

    _, run = trained
    model = DiffusionSampler(run, device="cpu")
    row = interpolate_noise(model, 3, 5, points=3, cls=1, steps=4, progress=False)
    ends = model.sample(2, seed=3, labels=[1, 1], sampler="dpm++2m", steps=4, progress=False)  # seeds 3 and 4
    torch.testing.assert_close(row[0], ends[0], atol=1e-5, rtol=0)  # the first end is seed 3's deterministic sample
    strip = denoising_strip(model, frames=3, cls=0, stochastic_steps=3, deterministic_steps=3, progress=False)
    assert strip.size[0] > 0
    for command in (["strip", "--frames", "3", "--deterministic-steps", "3", "--stochastic-steps", "3"],
                    ["interpolate", "--between", "classes", "--class", "0", "--to-class", "1", "--steps", "3",
                     "--points", "3"]):
        out = tmp_path / f"{command[0]}.png"
        assert main([*command, "--checkpoint", str(run), "--output", str(out), "--no-progress"]) == 0
        assert out.is_file()


def test_the_demo_draws_with_the_objectives_samplers(trained, tmp_path):
    from ddpmkit.demo import draw

    model = DiffusionSampler(trained[1], device="cpu")
    drawn = draw(model, tmp_path, ["0", "1"], 2, 1.0, "heun", 3, 0)
    assert all(Path(p).is_file() for p in (drawn.grid, drawn.animation))


def test_a_flow_model_exports_to_diffusers_whose_euler_draws_its_samples(tiny_idx_root, trained, tmp_path):
    # The card's example (FlowMatchEulerDiscreteScheduler, class labels, guidance) run as a user would paste it, against
    # ddpmkit's Euler at the scheduler's times; and the folder read back samples as the checkpoint.
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ddpmkit.objectives import RectifiedFlow
    from ddpmkit.samplers import integrate
    from test_export import python_snippet

    objective, run = trained
    if objective != "flow":
        pytest.skip("edm models have no diffusers folder (tested above)")
    assert main(["export", "--checkpoint", str(run), "--output", str(tmp_path / "hub")]) == 0
    torch.manual_seed(5)
    scope: dict = {}
    exec(python_snippet((tmp_path / "hub" / "README.md").read_text(), tmp_path / "hub"), scope)
    model = DiffusionSampler(run, device="cpu")
    torch.manual_seed(5)
    labels = torch.arange(len(model.class_names))
    x_T = torch.randn(len(labels), *model.image_shape)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "hub", subfolder="scheduler")
    scheduler.set_timesteps(20)
    network = model.denoiser(labels, 1.0, 0.0)
    x0 = integrate(lambda x, t: RectifiedFlow().velocity(network, x, torch.full((len(x),), t)), x_T,
                   scheduler.sigmas, heun=False, progress=False)
    torch.testing.assert_close(scope["images"], model.to_images(x0), atol=1e-4, rtol=0)
    back = DiffusionSampler(tmp_path / "hub", device="cpu")
    assert back.objective == "flow"
    assert torch.equal(back.sample(2, labels=[0, 1], steps=4, progress=False),
                       model.sample(2, labels=[0, 1], steps=4, progress=False))


def test_an_unconditional_flow_models_folder_runs_in_ddpm_pipeline(tiny_idx_root, tmp_path):
    # DDPMPipeline feeds the scheduler's timesteps (1000 sigma) to the UNet2DModel and calls scheduler.step: with the
    # FlowMatchEulerDiscreteScheduler the export names, that is the flow model's Euler sampler, nothing else needed.
    from test_export import python_snippet

    d = tiny_config_dict(tiny_idx_root)
    d["diffusion"] = {"objective": "flow"}
    d["train"].update(steps=2, eval_every=0)
    train(config_from_dict(d), tmp_path / "run", progress=False)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / "hub")]) == 0
    assert json.loads((tmp_path / "hub" / "model_index.json").read_text())["scheduler"][1] == \
        "FlowMatchEulerDiscreteScheduler"
    scope: dict = {}
    exec(python_snippet((tmp_path / "hub" / "README.md").read_text(), tmp_path / "hub"), scope)
    assert len(scope["images"]) == 16 and scope["images"][0].size == (8, 8)


def test_the_levels_move_with_shift_or_rho_and_the_command_line_takes_them(trained, tmp_path):
    objective, run = trained
    model = DiffusionSampler(run, device="cpu")
    option = {"edm": "rho", "flow": "shift"}[objective]
    levels = []
    plain = model.sample(2, sampler="euler", steps=4, progress=False,
                         on_step=lambda level, x, x0: levels.append(level))
    moved_levels = []
    moved = model.sample(2, sampler="euler", steps=4, progress=False, **{option: 3.0},
                         on_step=lambda level, x, x0: moved_levels.append(level))
    # the ends stay (t = 1 or sigma_max; sigma_min), the levels between them move
    assert moved_levels[0] == pytest.approx(levels[0]) and all(a != b for a, b in zip(moved_levels[1:-1], levels[1:-1]))
    assert not torch.equal(plain, moved)
    with pytest.raises(DdpmkitError, match=f"{option} must be a finite number > 0"):
        model.sample(2, steps=4, progress=False, **{option: -1.0})
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "2", "--steps", "3", f"--{option}", "3",
                 "--output-dir", str(tmp_path), "--no-progress"]) == 0


def test_a_ddpm_model_refuses_shift_and_rho(tiny_conditional_checkpoint):
    model = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    with pytest.raises(DdpmkitError, match="options of edm .rho. and flow .shift. models"):
        model.sample(2, steps=3, shift=3.0, progress=False)


def test_inversion_decodes_back_to_the_image(trained, tiny_idx_root):
    # Euler towards noise, refined to the exact inverse of the decoder's Euler steps: decode(invert(x)) = x.
    objective, run = trained
    model = DiffusionSampler(run, device="cpu")
    model.precision = "fp32"
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    labels = torch.tensor([0, 1, 0])
    # The fixed-point iteration contracts when a step times the drift's Lipschitz constant is below 1: at 32 steps
    # here (at 8 or 16 it has not converged after 20 iterations).
    latents = model.invert(images, labels, steps=32, refine=20, progress=False)
    assert latents.shape == images.shape and torch.isfinite(latents).all()
    back = model.decode(latents, labels, steps=32, progress=False)
    assert (back - images).abs().max() < 1e-3
    plain = model.decode(model.invert(images, labels, steps=32, progress=False), labels, steps=32, progress=False)
    assert (plain - images).abs().max() > (back - images).abs().max()  # unrefined: exact only as steps shrink


def test_the_reconstruction_metric_runs_for_the_objective(trained, tiny_idx_root):
    from ddpmkit.evaluate import evaluate

    _, run = trained
    report = evaluate(run, metrics=("reconstruction",), inversion_steps=(4,), inversion_images=4, device="cpu",
                      progress=False)
    row = report["reconstruction"]["per_steps"]["4"]
    assert report["reconstruction"]["images"] == 4 and row["psnr"] > 5 and "Euler" in report["reconstruction"]["decoder"]
