"""LPIPS is read only from torch hub's cache or a given path: missing weights give the instructions, present ones
(here a stand-in file with the right name and layout) are used as they are."""
import pytest
import torch

from ddpmkit.metrics.perceptual import (diversity_pairs, lpips_backbone, lpips_diversity, lpips_metric, paired_lpips,
                                        to_lpips_input)

ALEX_FILE = "alexnet-owt-7be5be79.pth"


def test_missing_backbone_says_what_to_download_and_where(empty_hub):
    with pytest.raises(FileNotFoundError) as info:
        lpips_backbone("alex")
    message = str(info.value)
    assert ALEX_FILE in message and str(empty_hub) in message and "https://download.pytorch.org" in message
    assert "--lpips-weights" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="not found at /nowhere/alex.pth"):
        lpips_backbone("alex", "/nowhere/alex.pth")


def test_lpips_runs_on_weights_from_a_given_path_and_from_the_cache(empty_hub, standin_alexnet, tmp_path,
                                                                   monkeypatch):
    metric = lpips_metric("alex", standin_alexnet)
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert paired_lpips(metric, images, images) == pytest.approx(0.0, abs=1e-6)   # a distance: d(x, x) = 0
    other = images.flip(0)
    assert paired_lpips(metric, images, other) > 0
    assert paired_lpips(metric, images, other) == pytest.approx(paired_lpips(metric, other, images), rel=1e-5)
    assert torch.hub.get_dir() == str(empty_hub.parent)   # the temporary redirection is undone ...
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "other"))
    assert torch.hub.get_dir() == str(tmp_path / "other" / "hub")   # ... and $TORCH_HOME still decides
    monkeypatch.setenv("TORCH_HOME", str(empty_hub.parent.parent))
    empty_hub.mkdir(parents=True)
    (empty_hub / ALEX_FILE).symlink_to(standin_alexnet)
    cached = lpips_metric("alex")
    assert paired_lpips(cached, images, other) == pytest.approx(paired_lpips(metric, images, other), rel=1e-6)


def test_lpips_input_is_three_channel_and_large_enough():
    out = to_lpips_input(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 3, 64, 64)
    assert to_lpips_input(torch.rand(2, 3, 96, 96)).shape == (2, 3, 96, 96)


def test_diversity_pairs_stay_within_a_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    pairs = diversity_pairs(labels, len(labels), max_pairs=100)
    assert len(pairs) == 3 + 1        # C(3, 2) of class 0, C(2, 2) of class 1, none of class 2
    assert torch.equal(labels[pairs[:, 0]], labels[pairs[:, 1]]) and (pairs[:, 0] < pairs[:, 1]).all()
    capped = diversity_pairs(torch.zeros(50, dtype=torch.long), 50, max_pairs=30)
    assert len(capped) == 30 and len({tuple(p) for p in capped.tolist()}) == 30
    assert len(diversity_pairs(None, 5, max_pairs=100)) == 10
    with pytest.raises(ValueError):
        diversity_pairs(torch.tensor([0, 1]), 2, max_pairs=10)


def test_identical_samples_have_no_diversity(empty_hub, standin_alexnet):
    metric = lpips_metric("alex", standin_alexnet)
    same = torch.rand(1, 1, 8, 8).expand(4, -1, -1, -1)
    varied = torch.rand(4, 1, 8, 8)
    assert lpips_diversity(metric, same, None)[0] == pytest.approx(0.0, abs=1e-6)
    value, pairs = lpips_diversity(metric, varied, None)
    assert value > 0 and pairs == 6
