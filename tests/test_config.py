"""Configuration: presets, files, --set overrides and the errors a user sees."""
import json

import pytest

from ddpmkit.build import unet_spec
from ddpmkit.config import PRESETS, Config, config_from_dict, parse_set, resolve_config
from ddpmkit.errors import ConfigError
from ddpmkit.unet import UNet


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    cfg = resolve_config(name)
    assert isinstance(cfg, Config)


def test_ddpm_cifar10_is_the_papers_network():
    # Ho et al. 2020, appendix B: 35.7M parameters, unconditional, T = 1000 linear betas from 1e-4 to 0.02.
    cfg = resolve_config("ddpm-cifar10")
    spec = unet_spec(cfg, channels=3, num_classes=10)  # CIFAR-10 has labels, but the model must not use them
    assert spec.num_classes == 0
    assert sum(p.numel() for p in UNet(spec).parameters()) / 1e6 == pytest.approx(35.7, abs=0.05)
    d = cfg.diffusion
    assert (d.num_timesteps, d.beta_schedule, d.beta_start, d.beta_end) == (1000, "linear", 1e-4, 0.02)


def test_precedence_defaults_preset_file_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nlr = 3e-4\nsteps = 10\n[model]\nchannel_mults = [1, 2]\n')
    cfg = resolve_config("quick", path, ["train.steps=20", "model.attention_resolutions=none"])
    assert cfg.train.lr == 3e-4                       # file beats preset
    assert cfg.train.steps == 20                      # --set beats file
    assert cfg.model.channel_mults == (1, 2)
    assert cfg.model.attention_resolutions == ()
    assert cfg.model.base_channels == PRESETS["quick"]["model"]["base_channels"]  # preset beats defaults
    assert cfg.train.grad_clip == Config().train.grad_clip


def test_json_file_and_round_trip(tmp_path):
    cfg = resolve_config("cifar10", overrides=["train.precision=fp16", "model.channel_mults=1,2"])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(config_file=path) == cfg
    assert config_from_dict(json.loads(path.read_text())) == cfg


@pytest.mark.parametrize("assignment,message", [
    ("train.foo=1", "unknown key train.foo; allowed: steps"),
    ("trian.lr=1", "unknown section 'trian'"),
    ("train.lr=fast", "train.lr: 'fast' is not a valid float"),
    ("train.steps=1.5", "train.steps"),
    ("train.lr=nan", "train.lr: must be > 0"),
    ("train.precision=fp8", "train.precision: 'fp8' is not allowed; choose one of fp32, bf16, fp16"),
    ("data.dataset=imagenet", "choose one of mnist, fashion_mnist, cifar10, celeba, folder"),
    ("model.norm_groups=5", "model.norm_groups: 5 does not divide"),
    ("model.attention_heads=3", "model.attention_heads: 3 does not divide"),
    ("diffusion.loss=bce", "bce compares probabilities"),
    ("diffusion.num_timesteps=10", "use a larger T"),
    ("data.image_size=30", "cannot be halved"),
    ("train.grid_steps=5000", "more than diffusion.num_timesteps"),
    ("train", "expected section.key=value"),
])
def test_bad_values_name_the_key_and_the_fix(assignment, message):
    with pytest.raises(ConfigError, match=None) as err:
        resolve_config("quick", overrides=[assignment])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bce_is_allowed_with_x0_in_unit_range():
    cfg = resolve_config("quick", overrides=["diffusion.loss=bce", "diffusion.prediction=x0", "data.zero_one=true"])
    assert cfg.diffusion.loss == "bce"


def test_parse_set_and_bool_values():
    assert parse_set(["a.b=c=d"]) == {"a": {"b": "c=d"}}
    assert resolve_config(overrides=["data.hflip=yes"]).data.hflip is True
    assert resolve_config(overrides=["data.hflip=0"]).data.hflip is False


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(config_file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=")
    with pytest.raises(ConfigError, match="could not be parsed"):
        resolve_config(config_file=bad)
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train: {}")
    with pytest.raises(ConfigError, match="use a .toml or .json"):
        resolve_config(config_file=yaml)
