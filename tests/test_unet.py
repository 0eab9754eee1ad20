"""The U-Net: shapes and gradient flow for every option, conditioning, and its independence from the schedule."""
import dataclasses

import pytest
import torch

from ddpmkit.unet import UNet, UNetSpec, timestep_embedding

BASE = UNetSpec(image_channels=3, image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), attention_heads=2, norm_groups=4)
OPTIONS = {
    "default": {},
    "no attention at the sides": {"attention_resolutions": ()},
    "UNet-mini (attention-free)": {"attention_resolutions": (), "middle_attention": False},
    "three levels": {"channel_mults": (1, 2, 2), "num_res_blocks": 2},
    "space_to_depth": {"downsample": "space_to_depth"},
    "transposed": {"upsample": "transposed"},
    "weight standardization": {"weight_standardization": True},
    "dropout": {"dropout": 0.1},
    "conditional": {"num_classes": 5},
    "sigmoid output": {"output_activation": "sigmoid"},
    "grayscale 32": {"image_channels": 1, "image_size": 32, "attention_resolutions": (16,)},
    "the DDPM authors' code": {"downsample": "conv_asymmetric", "embedding_sin_first": True,
                               "embedding_frequency_shift": 1.0, "norm_eps": 1e-6},
}


def _randomise_zero_layers(net: UNet) -> None:
    """Zero-initialised output layers would hide missing gradient paths: give every parameter a random value."""
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_shapes_and_every_parameter_gets_a_gradient(name):
    spec = dataclasses.replace(BASE, **OPTIONS[name])
    net = UNet(spec)
    _randomise_zero_layers(net)
    x = torch.randn(3, spec.image_channels, spec.image_size, spec.image_size)
    t = torch.tensor([0, 5, 999])
    y = torch.tensor([0, 4, 5]) if spec.num_classes else None  # 5 = the null label
    out = net(x, t, y)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_unet_mini_has_no_attention_anywhere():
    # UNet-mini is "a deep convolutional network without attention layers": none at the sides nor in the middle.
    mini = UNet(dataclasses.replace(BASE, attention_resolutions=(), middle_attention=False))
    assert not [m for m in mini.modules() if type(m).__name__ == "SelfAttention"]
    assert len([m for m in UNet(dataclasses.replace(BASE, attention_resolutions=())).modules()
                if type(m).__name__ == "SelfAttention"]) == 1  # DDPM's middle attention, the default


def test_output_starts_at_zero():
    # The zero-initialised last convolution makes the untrained network predict eps = 0 (as DDPM's code does).
    out = UNet(BASE)(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    assert torch.equal(out, torch.zeros_like(out))


def test_timestep_changes_the_output():
    net = UNet(BASE)
    _randomise_zero_layers(net)
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([10])), net(x, torch.tensor([500])))


def test_labels_change_the_output_and_none_means_null():
    net = UNet(dataclasses.replace(BASE, num_classes=3))
    _randomise_zero_layers(net)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 100])
    assert not torch.allclose(net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1])))
    assert torch.equal(net(x, t), net(x, t, torch.tensor([3, 3])))


def test_unconditional_net_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(BASE)(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))


def test_images_are_independent_within_a_batch():
    # GroupNorm normalises per image, so an image's output must not depend on its batch-mates.
    net = UNet(BASE)
    _randomise_zero_layers(net)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([3, 30, 300, 900])
    assert torch.allclose(net(x, t)[2:], net(x[2:], t[2:]), atol=1e-5)


def test_timestep_embedding_is_the_transformer_sinusoid():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_timestep_embedding_of_the_ddpm_authors_code():
    # DDPM's get_timestep_embedding: emb = exp(-log(10000) k / (half - 1)), k = 0 .. half - 1; [sin(t emb), cos(t emb)]
    t, dim = torch.tensor([0, 7, 999]), 12
    k = torch.arange(6, dtype=torch.float64)
    args = t[:, None].double() * torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * k / 5)
    expected = torch.cat([torch.sin(args), torch.cos(args)], dim=1).float()
    torch.testing.assert_close(timestep_embedding(t, dim, sin_first=True, frequency_shift=1), expected)


def test_asymmetric_downsampling_pads_after_as_tensorflows_same():
    # A stride-2 3x3 conv with SAME padding on an even side pads 0 before and 1 after: output (i, j) sees inputs
    # 2i..2i+2, so a kernel tapping only its top-left corner returns x[::2, ::2]; padding 1 on each side shifts it.
    from ddpmkit.unet import Downsample

    x = torch.randn(1, 1, 8, 8)
    for kind, expected in (("conv_asymmetric", x[..., ::2, ::2]),
                           ("conv", torch.nn.functional.pad(x, (1, 0, 1, 0))[..., :-1:2, :-1:2])):
        down = Downsample(1, kind)
        with torch.no_grad():
            down.op.weight.zero_()
            down.op.weight[0, 0, 0, 0] = 1
            down.op.bias.zero_()
        torch.testing.assert_close(down(x), expected)


def test_ddpm_cifar10_size():
    # Ho et al. 2020, appendix B: the CIFAR-10 model has 35.7M parameters.
    spec = UNetSpec(image_channels=3, image_size=32, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=(16,), dropout=0.1)
    assert sum(p.numel() for p in UNet(spec).parameters()) / 1e6 == pytest.approx(35.7, abs=0.05)


@pytest.mark.parametrize("middle_attention", [True, False])
def test_throughput_benchmark_builds_diffusers_to_the_same_network(middle_attention):
    # benchmarks/throughput.py compares against UNet2DModel built to ddpmkit's shape: the parameter counts agree.
    import sys
    from pathlib import Path

    pytest.importorskip("diffusers")
    from diffusers import UNet2DModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from throughput import diffusers_config

    spec = UNetSpec(image_channels=1, image_size=32, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                    norm_groups=8, num_classes=10, middle_attention=middle_attention)
    ours = sum(p.numel() for p in UNet(spec).parameters())
    assert sum(p.numel() for p in UNet2DModel(**diffusers_config(spec)).parameters()) == ours
