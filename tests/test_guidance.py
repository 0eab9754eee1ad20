"""Class conditioning and classifier-free guidance (Ho & Salimans 2022)."""
import pytest
import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.global_batch import StepRandomness
from ddpmkit.guidance import drop_labels, guided_denoiser, parse_classes
from ddpmkit.unet import UNet, UNetSpec

NAMES = ["T-shirt/top", "Trouser", "Pullover"]


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = UNet(UNetSpec(image_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          norm_groups=4, num_classes=3))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # leave no zero-initialised layer: outputs must depend on labels
    return model.eval()


def test_guidance_zero_is_the_plain_conditional_prediction(net):
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 50, 300, 999]), torch.tensor([0, 1, 2, 1])
    assert torch.equal(guided_denoiser(net, y, 0.0, 3)(x, t), net(x, t, y))


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_guided_output_is_the_cfg_formula_from_one_batched_pass(net, w):
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 50, 300, 999]), torch.tensor([0, 1, 2, 1])
    cond, uncond = net(x, t, y), net(x, t, torch.full((4,), 3))
    assert torch.allclose(guided_denoiser(net, y, w, 3)(x, t), (1 + w) * cond - w * uncond, atol=1e-5)


def test_soft_labels_equal_hard_labels_at_the_corners(net):
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 3]), 4).float()
    assert torch.allclose(net(x, t, one_hot), net(x, t, torch.tensor([2, 3])), atol=1e-5)


def test_null_label_is_drawn_with_the_configured_probability():
    labels = torch.randint(0, 10, (200_000,))
    g = torch.Generator()
    for p in (0.0, 0.1, 0.5):
        drawn = StepRandomness.draw(g, 0, 0, slice(0, len(labels)), (1, 1, 1), 10, hflip=False, label_dropout=p)
        dropped = drop_labels(labels, drawn.drops, 10)
        fraction = (dropped == 10).float().mean().item()
        assert fraction == pytest.approx(p, abs=4 * (p * (1 - p) / len(labels)) ** 0.5 + 1e-9)  # 4 sigma
        kept = dropped != 10
        assert torch.equal(dropped[kept], labels[kept])


def test_parse_classes():
    assert parse_classes("all", NAMES) == [0, 1, 2]
    assert parse_classes("trouser", NAMES) == [1]
    assert parse_classes("2,T-shirt/top", NAMES) == [2, 0]
    assert parse_classes(1, NAMES) == [1]
    with pytest.raises(DdpmkitError, match="unknown class 'Sock'; this model knows: T-shirt/top, Trouser"):
        parse_classes("Sock", NAMES)
    with pytest.raises(DdpmkitError, match="out of range"):
        parse_classes("7", NAMES)
    with pytest.raises(DdpmkitError, match="unconditional"):
        parse_classes("1", [])
