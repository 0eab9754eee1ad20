"""diffusers' format, both ways, against diffusers itself: the same network outputs and the same samples."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.build import noise_schedule, unet_spec
from ddpmkit.checkpoint import save_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import DiffusionConfig, config_from_dict
from ddpmkit.errors import DdpmkitError
from ddpmkit.export import export
from ddpmkit.formats.diffusers_scheduler import ddpm_scheduler_config, diffusion_from_scheduler
from ddpmkit.formats.diffusers_unet import Unsupported, spec_from_unet2d_config
from ddpmkit.formats.loaded import checkpoint_state
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.unet import UNet

from conftest import tiny_config_dict

diffusers = pytest.importorskip("diffusers", reason="diffusers is the independent implementation these tests check")

# google/ddpm-cifar10-32's unet/config.json as published on the Hub (diffusers 0.0.4 era: no dropout key, one head).
DDPM_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
DDPM_CIFAR10_SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
                          "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
                          "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights drawn at random: ddpmkit zero-initialises its output layers, which would make every comparison 0 = 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def random_checkpoint(root: Path, path: Path, classes: int = 0, model: dict | None = None,
                      diffusion: dict | None = None, data: dict | None = None, names: list | None = None) -> Path:
    """A ddpmkit checkpoint of the tiny test config (8x8 greyscale, T = 10) with random weights."""
    d = tiny_config_dict(root)
    d["model"].update(class_conditional=classes > 0, **(model or {}))
    d["diffusion"].update(diffusion or {})
    d["data"].update(data or {})
    cfg = config_from_dict(d)
    spec = unet_spec(cfg, 1, classes)
    weights = randomize(UNet(spec)).state_dict()
    names = [f"c{i}" for i in range(classes)] if names is None else names
    save_checkpoint(checkpoint_state(weights, spec, cfg, 6, names), path)
    return path


def network_inputs(sampler: DiffusionSampler, n: int = 4, classes: int = 0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, *sampler.image_shape), generator=g)
    t = torch.randint(0, sampler.schedule.num_timesteps, (n,), generator=g)
    y = torch.arange(n) % (classes + 1) if classes else None  # includes the null label
    return x, t, y


def ours(sampler: DiffusionSampler, x, t, y=None) -> torch.Tensor:
    with torch.no_grad():
        return sampler.model(x, t, y)


@pytest.fixture
def exported(tiny_idx_root, tmp_path) -> tuple[Path, Path]:
    """(a random unconditional checkpoint, its export through the command line)."""
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt")
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "hub")]) == 0
    return checkpoint, tmp_path / "hub"


def test_export_loads_in_diffusers_with_the_same_network_outputs(exported):
    checkpoint, folder = exported
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == {
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json", "ddpmkit.json", "training_config.json", "README.md"}
    pipeline = diffusers.DDPMPipeline.from_pretrained(folder)
    ddpmkit = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    x, t, _ = network_inputs(ddpmkit)
    with torch.no_grad():
        theirs = pipeline.unet(x, t).sample
    torch.testing.assert_close(theirs, ours(ddpmkit, x, t), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pipeline.unet.parameters()) == sum(p.numel() for p in ddpmkit.model.parameters())
    torch.testing.assert_close(pipeline.scheduler.betas.double(), ddpmkit.schedule.betas_float64, rtol=1e-6, atol=0)


def test_diffusers_pipelines_draw_ddpmkits_samples_from_the_same_noise(exported):
    checkpoint, folder = exported
    ddpmkit = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    seeds = [3, 1, 4, 1000]
    gens = lambda: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731 - per-image noise, as ddpmkit's
    T = ddpmkit.schedule.num_timesteps
    ddpm = diffusers.DDPMPipeline.from_pretrained(folder)(batch_size=4, generator=gens(), num_inference_steps=T,
                                                          output_type="np").images
    expected = ddpmkit.generate(seeds, sampler="ddpm", progress=False)
    np.testing.assert_allclose(ddpm, expected.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    ddim = diffusers.DDIMPipeline.from_pretrained(folder)(batch_size=4, generator=gens(), num_inference_steps=5,
                                                          eta=0.0, use_clipped_model_output=True,
                                                          output_type="np").images
    expected = ddpmkit.generate(seeds, sampler="ddim", steps=5, progress=False)  # both trailing: the exported spacing
    np.testing.assert_allclose(ddim, expected.permute(0, 2, 3, 1).numpy(), atol=1e-4)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_pipelines_with_fewer_steps_than_t_draw_ddpmkits_samples(tiny_idx_root, tmp_path, variance):
    """Respaced ancestral sampling (IDDPM §4) adds no noise at the last step in ddpmkit (DDPM Algorithm 2); diffusers'
    DDPMScheduler adds noise at every t > 0, of variance 1 - abar_t there under fixed_large, so the export must name
    timesteps that end at t = 0 for a beta model (issue 24.4: trailing ended at t = T / S - 1 and added noise)."""
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt",
                                   diffusion={"num_timesteps": 100, "variance": variance})
    export(checkpoint, tmp_path / "hub")
    pipeline = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hub")
    ddpmkit = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    seeds = [3, 1, 4, 1000]
    for steps in (10, 50):
        theirs = pipeline(batch_size=4, generator=[torch.Generator().manual_seed(s) for s in seeds],
                          num_inference_steps=steps, output_type="np").images
        spacing = pipeline.scheduler.config.timestep_spacing  # the one the export names; the model card says so
        assert pipeline.scheduler.timesteps[0] == 99  # either starts from pure noise, at T - 1
        expected = ddpmkit.generate(seeds, sampler="ddpm", steps=steps, spacing=spacing, progress=False)
        np.testing.assert_allclose(theirs, expected.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    assert f"`--spacing {spacing}`" in (tmp_path / "hub" / "README.md").read_text()


def test_a_diffusers_folder_reads_back_as_the_same_model(exported):
    checkpoint, folder = exported
    original = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    again = DiffusionSampler.from_diffusers(folder, device="cpu", precision="fp32")
    assert again.model.spec == original.model.spec and again.step == original.step == 6
    assert again.config.to_dict() == original.config.to_dict()  # training_config.json restores data, train, loss
    x, t, _ = network_inputs(original)
    assert torch.equal(ours(again, x, t), ours(original, x, t))
    assert again.weights_file == folder / "unet" / "diffusion_pytorch_model.safetensors"


def test_an_unconditional_model_of_labelled_data_round_trips(tiny_idx_root, tmp_path):
    # Trained without labels on MNIST, it still carries MNIST's class names (regression: the import took the ten
    # names for ten labels the network does not have, and refused the folder).
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt", names=[str(i) for i in range(10)])
    export(checkpoint, tmp_path / "hub")
    again = DiffusionSampler(tmp_path / "hub", device="cpu")
    assert not again.is_conditional and again.class_names == DiffusionSampler(checkpoint, device="cpu").class_names


def test_a_conditional_model_round_trips_with_its_null_label(tiny_idx_root, tmp_path):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt", classes=3)
    export(checkpoint, tmp_path / "hub")
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "hub" / "unet")
    assert unet.config.num_class_embeds == 4 and unet.config.class_embed_type is None
    original = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    x, t, y = network_inputs(original, n=8, classes=3)
    with torch.no_grad():
        theirs = unet(x, t, class_labels=y).sample
    torch.testing.assert_close(theirs, ours(original, x, t, y), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours(original, x, t, torch.full((8,), 3)), ours(original, x, t))  # label 3 is the null label
    again = DiffusionSampler(tmp_path / "hub", device="cpu", precision="fp32")
    assert again.class_names == ["c0", "c1", "c2"] and again.is_conditional
    guided = dict(labels=[0, 1, 2, 0], guidance=2.0, sampler="ddim", steps=4, progress=False)
    assert torch.equal(again.generate([0, 1, 2, 3], **guided), original.generate([0, 1, 2, 3], **guided))
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "null label 3" in card and "class_labels=" in card


@pytest.mark.parametrize("model, reason", [
    ({"downsample": "space_to_depth"}, "space-to-depth downsampling"),
    ({"upsample": "transposed"}, "transposed upsampling"),
    ({"weight_standardization": True}, "weight-standardised convolutions"),
    ({"attention_heads": 2, "attention_resolutions": [8, 4]}, "heads of widths [4, 8]"),
])
def test_architectures_unet2dmodel_cannot_express_are_refused_in_one_line(tiny_idx_root, tmp_path, capsys, model,
                                                                          reason):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt", model=model)
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "hub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNet2DModel" in err and reason in err
    assert not (tmp_path / "hub").exists() and not list(tmp_path.glob(".hub*"))  # nothing half-written


def test_a_model_of_images_in_zero_one_is_refused(tiny_idx_root, tmp_path):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt", data={"zero_one": True})
    with pytest.raises(Unsupported, match=r"\[0, 1\].*\[-1, 1\]"):
        export(checkpoint, tmp_path / "hub")


def test_export_keeps_an_existing_folder_unless_asked(exported, tmp_path, capsys):
    checkpoint, folder = exported
    before = (folder / "unet" / "config.json").read_bytes()
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(folder), "--no-ema", "--overwrite"]) == 0
    assert (folder / "unet" / "config.json").read_bytes() == before
    assert json.loads((folder / "ddpmkit.json").read_text())["weights"] == "raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "model.pt"]  # no temporary folders left


# -- the other direction: a diffusers model into ddpmkit -------------------------------------------------------------

def save_ddpm_cifar10(folder: Path, flat: bool = False) -> "diffusers.UNet2DModel":
    """The DDPM CIFAR-10 network in google/ddpm-cifar10-32's configuration, random weights, saved by diffusers."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**{k: v for k, v in DDPM_CIFAR10_CONFIG.items() if not k.startswith("_")}).eval()
    scheduler = diffusers.DDPMScheduler.from_config(DDPM_CIFAR10_SCHEDULER)
    if flat:  # the layout of the Hub's google/ddpm-* repositories: the UNet and scheduler files at the top
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    else:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet


def test_the_ddpm_papers_cifar10_network_imports_with_the_same_outputs(tmp_path):
    unet = save_ddpm_cifar10(tmp_path / "ddpm-cifar10-32")
    sampler = DiffusionSampler.from_diffusers(tmp_path / "ddpm-cifar10-32", device="cpu", precision="fp32")
    parameters = sum(p.numel() for p in sampler.model.parameters())
    assert parameters == sum(p.numel() for p in unet.parameters()) and round(parameters / 1e6, 1) == 35.7  # the paper's
    spec = sampler.model.spec
    assert (spec.channel_mults, spec.attention_resolutions, spec.num_res_blocks) == ((1, 2, 2, 2), (16,), 2)
    assert (spec.downsample, spec.embedding_sin_first, spec.embedding_frequency_shift, spec.norm_eps) == \
        ("conv_asymmetric", True, 1.0, 1e-6)  # the DDPM authors' TensorFlow code, as diffusers reproduces it
    x, t, _ = network_inputs(sampler, n=2)
    with torch.no_grad():
        theirs = unet(x, t).sample
    torch.testing.assert_close(ours(sampler, x, t), theirs, rtol=1e-4, atol=1e-5)
    d = sampler.config.diffusion
    assert (d.num_timesteps, d.beta_schedule, d.prediction, d.variance, d.clip_x0) == \
        (1000, "linear", "eps", "posterior", True)
    torch.testing.assert_close(sampler.schedule.betas_float64,
                               diffusers.DDPMScheduler.from_config(DDPM_CIFAR10_SCHEDULER).betas.double(),
                               rtol=1e-6, atol=0)


def test_the_ddpm_authors_256_pixel_configuration_converts():
    # google/ddpm-cat-256 (and -church-, -bedroom-, -celebahq-256): six levels, attention at 16x16 only.
    config = {**DDPM_CIFAR10_CONFIG, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
              "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}
    spec = spec_from_unet2d_config(config, "ddpm-cat-256")
    assert (spec.channel_mults, spec.attention_resolutions, spec.image_size) == ((1, 1, 2, 2, 4, 4), (16,), 256)


def test_an_old_style_folder_with_pickled_weights_and_old_attention_names_imports(tmp_path):
    """google/ddpm-cifar10-32 was saved by diffusers 0.0.4: config and weights at the top, weights as a pickled
    state dict whose attention layers are named query/key/value/proj_attn."""
    folder = tmp_path / "old"
    unet = save_ddpm_cifar10(folder, flat=True)
    weights = unet.state_dict()
    renamed = {}
    for key, value in weights.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    torch.save(renamed, folder / "diffusion_pytorch_model.bin")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    sampler = DiffusionSampler(folder, device="cpu", precision="fp32")  # --checkpoint takes it as it is
    x, t, _ = network_inputs(sampler, n=2)
    with torch.no_grad():
        theirs = unet(x, t).sample
    torch.testing.assert_close(ours(sampler, x, t), theirs, rtol=1e-4, atol=1e-5)
    assert sampler.weights_file == folder / "diffusion_pytorch_model.bin"


def test_a_model_of_diffusers_train_unconditional_imports_with_its_attention_heads(tmp_path):
    """train_unconditional leaves attention_head_dim at UNet2DModel's default, 8: several heads per layer."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=2,
                                 block_out_channels=(16, 32, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "ddpm-ema-16")
    sampler = DiffusionSampler(tmp_path / "ddpm-ema-16", device="cpu", precision="fp32")
    assert sampler.model.spec.attention_heads == 4 and sampler.model.spec.attention_resolutions == (8,)
    x, t, _ = network_inputs(sampler, n=2)
    with torch.no_grad():
        theirs = unet(x, t).sample
    torch.testing.assert_close(ours(sampler, x, t), theirs, rtol=1e-4, atol=1e-5)
    # Nothing says what it was trained on: evaluate asks for the real data, and refuses the judge-classifier metrics
    # (shipped for MNIST-like data only) before spending time on sampling.
    assert sampler.config.data.dataset == "folder" and sampler.step == 0
    from ddpmkit.evaluate import evaluate

    with pytest.raises(DdpmkitError, match="ships one for mnist and fashion_mnist only, not folder"):
        evaluate(tmp_path / "ddpm-ema-16", progress=False)


def hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """``source``'s files as huggingface_hub caches a download of ``repo_id`` (refs/main -> a snapshot folder)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_a_hub_id_is_read_from_the_local_hugging_face_cache(exported, tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    checkpoint, folder = exported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # this machine is offline anyway; say so to the library
    hub_cache(tmp_path / "cache", "someone/tiny-ddpm", folder)
    sampler = DiffusionSampler.from_diffusers("someone/tiny-ddpm", device="cpu", precision="fp32")
    original = DiffusionSampler(checkpoint, device="cpu", precision="fp32")
    x, t, _ = network_inputs(original)
    assert torch.equal(ours(sampler, x, t), ours(original, x, t))
    assert main(["sample", "--checkpoint", "someone/tiny-ddpm", "--sampler", "ddim", "--steps", "2", "--num-samples",
                 "2", "--output-dir", str(tmp_path / "samples"), "--no-progress"]) == 0
    with pytest.raises(DdpmkitError, match="neither a file or folder here nor in the Hugging Face cache"):
        DiffusionSampler.from_diffusers("someone/not-downloaded")


@pytest.mark.parametrize("command", [
    ["sample", "--sampler", "ddpm", "--num-samples", "3"],
    ["strip", "--frames", "3", "--ddim-steps", "3"],
    ["interpolate", "--points", "3", "--steps", "3"],
    ["animate", "--per-class", "2", "--frames", "3", "--steps", "3"],
])
def test_every_picture_command_takes_a_diffusers_folder(exported, tmp_path, command):
    _, folder = exported
    out = ["--output-dir", str(tmp_path / "out")] if command[0] in ("sample", "animate") else \
        ["--output", str(tmp_path / "out.png")]
    assert main([command[0], "--checkpoint", str(folder), *command[1:], *out, "--no-progress"]) == 0


def test_inversion_and_evaluation_work_on_an_imported_model(exported, tiny_idx_root, tiny_judge, tmp_path):
    from ddpmkit.evaluate import evaluate
    from ddpmkit.metrics.domain import file_sha256

    _, folder = exported
    sampler = DiffusionSampler(folder, device="cpu", precision="fp32")
    images = torch.rand(2, *sampler.image_shape)
    latents = sampler.invert(images, steps=10, progress=False)
    assert latents.shape == images.shape and torch.isfinite(latents).all()
    report = evaluate(folder, num_samples=10, sampler="ddim", steps=2, metrics=("fd", "is"),
                      data_root=str(tiny_idx_root), classifier=tiny_judge, cache_dir=None, progress=False)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert report["samples"]["checkpoint_sha256"] == file_sha256(weights)
    assert np.isfinite(report["metrics"]["fd_mnist_classifier"])


# -- the schedule ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("diffusion", [
    {"beta_schedule": "linear", "num_timesteps": 1000},
    {"beta_schedule": "linear", "num_timesteps": 50},  # ddpmkit scales the T = 1000 betas by 1000 / T
    {"beta_schedule": "cosine", "num_timesteps": 100},
    {"beta_schedule": "cosine", "num_timesteps": 100, "cosine_s": 0.02},  # not diffusers' s: explicit betas
])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_scheduler_configs_give_diffusers_the_same_betas_and_read_back(diffusion, prediction):
    d = DiffusionConfig(**diffusion, prediction=prediction, variance="beta", clip_x0=False)
    config = ddpm_scheduler_config(d)
    scheduler = diffusers.DDPMScheduler.from_config(config)
    torch.testing.assert_close(scheduler.betas.double(), noise_schedule(d).betas_float64, rtol=2e-6, atol=0)
    assert scheduler.config.variance_type == "fixed_large" and not scheduler.config.clip_sample
    back = diffusion_from_scheduler(dict(scheduler.config), "test", known=d)
    for key, value in vars(d).items():
        assert back[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


@pytest.mark.parametrize("change, reason", [
    ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
    ({"variance_type": "learned_range"}, "predicts its own variance"),
    ({"rescale_betas_zero_snr": True}, "zero terminal SNR"),
    ({"prediction_type": "flow"}, "prediction_type='flow'"),
    ({"trained_betas": (torch.linspace(1e-4**0.5, 0.02**0.5, 1000) ** 2).tolist()},  # scaled_linear, spelt out
     "neither a linear schedule nor the cosine"),
])
def test_schedules_ddpmkit_does_not_have_are_refused(change, reason):
    with pytest.raises(Unsupported, match=reason):
        diffusion_from_scheduler({**DDPM_CIFAR10_SCHEDULER, **change}, "a folder")


def _discrete_time_schedulers() -> dict[str, bool]:
    """diffusers' schedulers of a discrete-time beta schedule, each with its clip_sample default (False: it has none,
    so never clips), read from the classes' signatures (modules whose optional dependencies are missing are left out)."""
    import importlib
    import inspect
    import pkgutil

    found = {}
    for info in pkgutil.iter_modules(diffusers.schedulers.__path__, "diffusers.schedulers."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        for name, cls in vars(module).items():
            if name.endswith("Scheduler") and isinstance(cls, type) and cls.__module__ == info.name:
                parameters = inspect.signature(cls.__init__).parameters
                if "num_train_timesteps" in parameters and "beta_schedule" in parameters:
                    found[name] = bool(parameters["clip_sample"].default) if "clip_sample" in parameters else False
    return found


def test_a_scheduler_config_without_clip_sample_takes_its_classes_default():
    # issue 24.5: a missing clip_sample read as true, whatever diffusers' default for the class named
    schedulers = _discrete_time_schedulers()
    assert {"DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler"} <= set(schedulers)
    without = {k: v for k, v in DDPM_CIFAR10_SCHEDULER.items() if k != "clip_sample"}
    for name, default in schedulers.items():
        assert diffusion_from_scheduler({**without, "_class_name": name}, "a folder")["clip_x0"] is default, name
        assert diffusion_from_scheduler({**without, "_class_name": name, "clip_sample": not default},
                                        "a folder")["clip_x0"] is (not default), name  # as written, when written
    with pytest.raises(Unsupported, match="clip_sample"):  # a class of which ddpmkit knows no default
        diffusion_from_scheduler({**without, "_class_name": "MyScheduler"}, "a folder")


@pytest.mark.parametrize("change, reason", [
    ({"_class_name": "UNet2DConditionModel"}, "not a UNet2DModel"),
    ({"out_channels": 6}, "also predicts its variance"),
    ({"down_block_types": ["DownBlock2D", "SkipDownBlock2D", "DownBlock2D", "DownBlock2D"]}, "SkipDownBlock2D"),
    ({"up_block_types": ["UpBlock2D"] * 4}, "attention in the up path"),
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"block_out_channels": [128, 192, 256, 256]}, "not multiples of the first"),
    ({"attention_head_dim": 64, "add_attention": True}, "heads at different levels"),
])
def test_unet2dmodel_configs_ddpmkit_cannot_build_are_refused(change, reason):
    config = {**DDPM_CIFAR10_CONFIG, **change}
    if "attention_head_dim" in change:  # 256 wide at 16x16 and in the middle: 4 heads both; make a level differ
        config["down_block_types"] = ["AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
        config["up_block_types"] = ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"]
    with pytest.raises(Unsupported, match=reason):
        spec_from_unet2d_config(config, "a folder")


def test_an_export_killed_midway_leaves_nothing_and_the_next_one_recovers(tiny_idx_root, tmp_path, monkeypatch):
    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the weights are written
    monkeypatch.setattr("safetensors.torch.save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(checkpoint, tmp_path / "hub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    monkeypatch.undo()
    # SIGKILL, which no handler sees, while writing: an unfinished folder; the next export deletes it.
    (tmp_path / ".hub.writing-abc123.tmp" / "unet").mkdir(parents=True)
    export(checkpoint, tmp_path / "hub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "model.pt"]
    # SIGKILL between moving the previous export aside and renaming the new one: the next export puts it back,
    # then refuses to replace it without --overwrite.
    before = (tmp_path / "hub" / "ddpmkit.json").read_bytes()
    (tmp_path / ".hub.replaced-def456.tmp").mkdir()
    (tmp_path / "hub").rename(tmp_path / ".hub.replaced-def456.tmp" / "hub")
    with pytest.raises(DdpmkitError, match="already exists"):
        export(checkpoint, tmp_path / "hub")
    assert (tmp_path / "hub" / "ddpmkit.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "model.pt"]


def test_overwrite_replaces_only_an_earlier_export(exported, tmp_path, tiny_conditional_checkpoint):
    checkpoint, _ = exported
    run_dir = tiny_conditional_checkpoint.parent
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(DdpmkitError, match="--overwrite replaces only an earlier export"):
        export(checkpoint, run_dir, overwrite=True)  # a run directory: its checkpoints stay
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_exported_files_are_readable_by_others_as_the_umask_allows(exported, tmp_path):
    # As open() and mkdir() would make them (regression: tempfile's private 0o600/0o700 reached the export).
    _, folder = exported
    (tmp_path / "plain_file").write_bytes(b"")
    (tmp_path / "plain_dir").mkdir()
    modes = {is_dir: (tmp_path / name).stat().st_mode & 0o777
             for is_dir, name in ((False, "plain_file"), (True, "plain_dir"))}
    for path in [folder, *folder.rglob("*")]:
        assert path.stat().st_mode & 0o777 == modes[path.is_dir()], path


def test_the_card_of_another_programs_model_claims_no_training(tmp_path):
    unet = save_ddpm_cifar10(tmp_path / "theirs")
    assert unet is not None
    export(tmp_path / "theirs", tmp_path / "hub")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "Not trained with ddpmkit" in card and "AdamW" not in card and "as saved in" in card
    assert not (tmp_path / "hub" / "training_config.json").exists()
    with pytest.raises(DdpmkitError, match="leave out --no-ema"):
        export(tmp_path / "theirs", tmp_path / "hub2", use_ema=False)


@pytest.mark.parametrize("damage", [
    ("unet/config.json", "[1, 2]"),
    ("unet/config.json", '{"_class_name": "UNet2DModel", "block_out_channels": [8, 16], "attention_head_dim": 0, '
                         '"down_block_types": ["DownBlock2D", "AttnDownBlock2D"], '
                         '"up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "sample_size": 8, "in_channels": 1, '
                         '"out_channels": 1, "norm_num_groups": 4}'),
    ("unet/config.json", None),  # norm_num_groups as a string, set below
    ("scheduler/scheduler_config.json", '{"num_train_timesteps": "many", "beta_schedule": "linear"}'),
    ("ddpmkit.json", '{"step": "x"}'),
    ("training_config.json", "[]"),
])
def test_malformed_config_files_give_one_line(exported, capsys, damage):
    _, folder = exported
    name, text = damage
    if text is None:
        config = json.loads((folder / name).read_text())
        config["norm_num_groups"] = "four"
        text = json.dumps(config)
    (folder / name).write_text(text)
    assert main(["sample", "--checkpoint", str(folder), "--num-samples", "1", "--output-dir",
                 str(folder.parent / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
