"""DiffusionSampler: network precision, and inversion/decoding of images through a real checkpoint."""
import inspect

import pytest
import torch

from ddpmkit.build import inference_precision
from ddpmkit.errors import DdpmkitError
from ddpmkit.sampling import DiffusionSampler


def test_auto_precision_is_bf16_only_where_the_device_has_it():
    assert inference_precision(torch.device("cpu"), "auto") == "fp32"
    assert inference_precision(torch.device("cpu"), "bf16") == "bf16"
    with pytest.raises(DdpmkitError, match="auto, fp32 or bf16"):
        inference_precision(torch.device("cpu"), "fp8")


def test_bf16_samples_match_fp32_within_bf16_rounding(tiny_conditional_checkpoint):
    fp32 = DiffusionSampler(tiny_conditional_checkpoint, device="cpu", precision="fp32")
    bf16 = DiffusionSampler(tiny_conditional_checkpoint, device="cpu", precision="bf16")
    options = {"sampler": "ddim", "steps": 10, "labels": [0, 1] * 4, "progress": False}
    a, b = fp32.sample(8, **options), bf16.sample(8, **options)
    assert not torch.equal(a, b)                           # the network did run in bf16 ...
    assert (a - b).abs().mean() < 1e-3, (a - b).abs().mean()  # ... and its 8-bit mantissa moves pixels little (2e-5)


def test_invert_then_decode_returns_images_in_range(tiny_conditional_checkpoint):
    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0])
    latents = sampler.invert(images, labels, steps=10, progress=False)
    assert latents.shape == images.shape and torch.isfinite(latents).all()
    rebuilt = sampler.decode(latents, labels, steps=10, progress=False)
    assert rebuilt.shape == images.shape and 0 <= rebuilt.min() and rebuilt.max() <= 1
    exact = sampler.decode(sampler.invert(images, labels, steps=10, refine=20, progress=False), labels, steps=10,
                           progress=False)
    assert (exact - images).abs().max() < 1e-3   # the refined inversion is the decoder's inverse on a real U-Net
    with pytest.raises(DdpmkitError, match="steps must be between 1 and T=10"):
        sampler.invert(images, labels, steps=11)


def test_sample_methods_without_steps_take_the_samplers_default(tiny_conditional_checkpoint):
    # Like sample() without steps, each method leaves the count to DEFAULT_STEPS capped at T: with T = 10 here,
    # sample_ddim's own 50 was an error.
    for method in ("sample_ddim", "sample_dpm_solver", "sample_unipc", "sample_heun"):
        assert inspect.signature(getattr(DiffusionSampler, method)).parameters["steps"].default is None, method
    model = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    assert torch.equal(model.sample_ddim(1, progress=False), model.sample(1, sampler="ddim", progress=False))


@pytest.mark.parametrize("num_images", [12, 20])
def test_training_draws_its_samples_as_diffusion_sampler_draws_them(tiny_conditional_checkpoint, num_images):
    # One seeded, batched sampling serves the training loop's grids and FD and DiffusionSampler: image i has seed i
    # and, for a conditional model, classes in blocks, class after class: image i of class i * K // N (two of each
    # class for 20 images and 10 classes; for 12 images, blocks of one or two).
    from ddpmkit.train import sample_images

    model = DiffusionSampler(tiny_conditional_checkpoint, device="cpu", precision="fp32")
    labels = [i * 10 // num_images for i in range(num_images)]
    expected = model.generate(list(range(num_images)), labels, sampler="ddim", steps=2, batch_size=5, progress=False)
    drawn = sample_images(model.model, model.schedule, model.config, model.device, num_images, "ddim", 2, batch_size=5)
    assert torch.equal(drawn, expected)
