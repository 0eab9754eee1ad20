"""Configuration: presets, files, --set overrides and the errors a user sees."""
import json
import math
import typing

import pytest

from ddpmkit.build import unet_spec
from ddpmkit.config import PRESETS, Config, config_from_dict, load_config_file, parse_set, resolve_config
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


@pytest.mark.parametrize("name", ["quick", "quick_ddpm", "quick_uncond", "mnist_cpu"])
def test_cpu_presets_are_unet_mini(name):
    # UNet-mini, the MNIST design: a deep convolutional network without attention layers, middle block included.
    cfg = resolve_config(name)
    net = UNet(unet_spec(cfg, channels=1, num_classes=10))
    assert not [m for m in net.modules() if type(m).__name__ == "SelfAttention"]
    assert (net.spec.num_classes > 0) == (name != "quick_uncond")


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
    ("train.lr=nan", "train.lr: must be a finite number, got 'nan'"),
    ("train.precision=fp8", "train.precision: 'fp8' is not allowed; choose one of fp32, bf16, fp16"),
    ("data.dataset=imagenet", "choose one of mnist, fashion_mnist, cifar10, celeba, folder"),
    ("model.norm_groups=5", "model.norm_groups: 5 does not divide"),
    ("model.norm_eps=0", "model.norm_eps: must be in (0, 1)"),
    ("model.embedding_frequency_shift=32", "below half the embedding width"),
    ("model.downsample=strided", "choose one of conv, conv_asymmetric, space_to_depth"),
    ("model.attention_heads=3;model.middle_attention=true", "model.attention_heads: 3 does not divide"),
    ("diffusion.loss_weighting=snr", "diffusion.loss_weighting: 'snr' is not allowed; choose one of none, min_snr"),
    ("diffusion.loss_weighting=min_snr;diffusion.min_snr_gamma=0", "diffusion.min_snr_gamma: must be > 0"),
    ("diffusion.loss_weighting=min_snr;diffusion.loss=bce;diffusion.prediction=x0;data.zero_one=true",
     "min_snr converts squared errors between predictions"),
    ("diffusion.loss_weighting=min_snr;diffusion.loss=l1", "or loss_weighting=none with loss=l1"),
    ("train.ema_halflife_images=-5", "train.ema_halflife_images: must be >= 0"),
    ("diffusion.loss=bce", "bce compares probabilities"),
    ("diffusion.num_timesteps=10", "use a larger T"),
    ("data.image_size=30", "cannot be halved"),
    ("train.grid_steps=5000", "more than diffusion.num_timesteps"),
    ("train", "expected section.key=value"),
])
def test_bad_values_name_the_key_and_the_fix(assignment, message):
    with pytest.raises(ConfigError, match=None) as err:
        resolve_config("quick_ddpm", overrides=assignment.split(";"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bce_is_allowed_with_x0_in_unit_range():
    cfg = resolve_config("quick_ddpm", overrides=["diffusion.loss=bce", "diffusion.prediction=x0", "data.zero_one=true",
                                            "diffusion.loss_weighting=none"])
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


def _float_fields() -> list[tuple[str, str, bool]]:
    """(section, key, is_tuple) for every float field, found from the dataclasses so new fields are covered too."""
    fields = []
    for section, cls in typing.get_type_hints(Config).items():
        for key, typ in typing.get_type_hints(cls).items():
            if typ is float or typing.get_args(typ)[:1] == (float,):
                fields.append((section, key, typ is not float))
    return fields


@pytest.mark.parametrize("section,key,is_tuple", _float_fields())
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("source", ["--set", "toml", "json"])
def test_non_finite_floats_are_refused_when_read(section, key, is_tuple, bad, source, tmp_path):
    # NaN and infinities are refused by the coercion itself, with one message, before validate() sees them (so a
    # new float field without a range check cannot let them in).
    text = {math.inf: "inf", -math.inf: "-inf"}.get(bad, "nan")
    if source == "--set":
        kwargs = {"overrides": [f"{section}.{key}={text},0.5" if is_tuple else f"{section}.{key}={text}"]}
    else:
        path = tmp_path / f"c.{source}"
        if source == "toml":
            path.write_text(f"[{section}]\n{key} = {f'[{text}, 0.5]' if is_tuple else text}\n")
        else:
            path.write_text(json.dumps({section: {key: [bad, 0.5] if is_tuple else bad}}))  # NaN / Infinity
        kwargs = {"config_file": path}
    with pytest.raises(ConfigError) as err:
        resolve_config(**kwargs)
    assert str(err.value).startswith(f"{section}.{key}: must be a finite number, got ")


@pytest.mark.parametrize("d,message", [
    ({"train": {"steps": 10**400}}, "train.steps: whole numbers must lie between -2**63 and 2**63 - 1"),
    ({"train": {"seed": 2**64}}, "train.seed: whole numbers must lie between -2**63 and 2**63 - 1"),
    ({"train": {"steps": 10**5000}}, "train.steps: whole numbers must lie between"),  # repr() refuses this one
    ({"train": {"lr": 10**400}}, "train.lr: must be a finite number"),             # float(10**400) overflows
    ({"model": {"channel_mults": [1, 2**70]}}, "model.channel_mults: whole numbers must lie between"),
])
def test_numbers_beyond_what_torch_can_hold_are_refused(d, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(d)
    assert str(err.value).startswith(message) and len(str(err.value)) < 200


@pytest.mark.parametrize("d", [
    {"train": {"no\nsuch key": 1}},                  # a key with a line break
    {"data": {"dataset": "x" * 5000}},                # a very long value
    {"data": {"dataset": "a\nb"}},
])
def test_error_messages_stay_one_short_line(d):
    with pytest.raises(ConfigError) as err:
        config_from_dict(d)
    assert "\n" not in str(err.value) and len(str(err.value)) < 500


@pytest.mark.parametrize("suffix,text", [
    (".json", '{"train": {"steps": ' + "1" * 5000 + "}}"),   # more digits than Python converts
    (".toml", "[train]\nsteps = " + "1" * 5000 + "\n"),
    (".json", "[" * 100_000),                                  # deeper than the parsers recurse
    (".toml", "a = " + "[" * 100_000),
])
def test_unparseable_files_give_a_config_error(suffix, text, tmp_path):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match="could not be parsed"):
        load_config_file(path)
