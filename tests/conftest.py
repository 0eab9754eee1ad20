"""Tiny CPU fixtures: 8x8 images, a two-level U-Net, T = 10 steps."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from ddpmkit.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_10K_DIR = REPO.parent / "shared" / "data" / "mnist-10k"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; PyTorch sees none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def oracle_denoiser(sched, prediction: str, posterior_mean_x0):
    """A network that outputs the exact optimum for the given E[x_0 | x_t] function, in the asked-for form."""
    def model(x, t):
        x0 = posterior_mean_x0(x, t)
        eps = sched.eps_from_x0(x, t, x0)
        return sched.training_target(prediction, x0, t, eps)
    return model


def gaussian_posterior_mean(sched, mean: float, std: float):
    """E[x_0 | x_t] for data ~ N(mean, std^2 I):
    mean + sqrt(abar) std^2 / (abar std^2 + 1 - abar) (x_t - sqrt(abar) mean)."""
    def x0_hat(x, t):
        a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return mean + a.sqrt() * std**2 / (a * std**2 + 1 - a) * (x - a.sqrt() * mean)
    return x0_hat


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (the MNIST format: magic, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_two_class_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a bright left half; class 1: a bright right half; plus a little noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 40, (n, size, size))
    for i, label in enumerate(labels):
        cols = slice(0, size // 2) if label == 0 else slice(size // 2, size)
        images[i, :, cols] = 255 - images[i, :, cols]
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_two_class_idx(root: Path, size: int, train: tuple[int, int], test: tuple[int, int]) -> Path:
    """An MNIST-format folder of two-class images: ``train`` and ``test`` are (count, seed)."""
    for split, (n, seed) in (("train", train), ("t10k", test)):
        images, labels = make_two_class_images(n, size, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def tiny_idx_root(tmp_path_factory) -> Path:
    """An MNIST-format folder with 64 training and 16 test 8x8 images of two classes."""
    return write_two_class_idx(tmp_path_factory.mktemp("tiny_idx"), 8, train=(64, 0), test=(16, 1))


def tiny_config_dict(root: Path) -> dict:
    return {
        "data": {"dataset": "mnist", "root": str(root), "image_size": 8, "download": False},
        "model": {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                  "norm_groups": 4},
        "diffusion": {"num_timesteps": 10, "beta_schedule": "cosine"},
        "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 3,
                  "eval_every": 3, "eval_images": 8, "sample_every": 0, "grid_images": 4, "grid_steps": 3,
                  "ema_decay": 0.9},
    }


@pytest.fixture
def tiny_config(tiny_idx_root) -> Config:
    return config_from_dict(tiny_config_dict(tiny_idx_root))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_conditional_checkpoint(tiny_idx_root, tmp_path_factory) -> Path:
    """A briefly trained class-conditional tiny model (MNIST class names 0..9, images of classes 0 and 1)."""
    from ddpmkit.train import train

    d = tiny_config_dict(tiny_idx_root)
    d["model"]["class_conditional"] = True
    d["train"].update(steps=4, eval_every=0)
    return train(config_from_dict(d), tmp_path_factory.mktemp("conditional_run"), progress=False)


def _train_judge(root: Path, path: Path, batch_size: int) -> Path:
    """A judge classifier for 8x8 images (the shipped ones judge 32x32 digits and clothes), saved as ``classifier
    train`` saves it."""
    from ddpmkit.config import DataConfig
    from ddpmkit.metrics.classifier import train_classifier

    torch.save(train_classifier(DataConfig(dataset="mnist", root=str(root), image_size=8), epochs=2,
                                batch_size=batch_size, progress=False), path)
    return path


@pytest.fixture(scope="session")
def tiny_judge(tiny_idx_root, tmp_path_factory) -> Path:
    return _train_judge(tiny_idx_root, tmp_path_factory.mktemp("judge") / "tiny_classifier.pt", batch_size=16)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """2,000 + 2,000 synthetic 8x8 two-class images: enough for stable 128-d feature covariances."""
    return write_two_class_idx(tmp_path_factory.mktemp("synthetic"), 8, train=(2000, 10), test=(2000, 11))


@pytest.fixture(scope="session")
def synthetic_judge(synthetic_root, tmp_path_factory) -> Path:
    """A judge classifier trained on the synthetic images."""
    return _train_judge(synthetic_root, tmp_path_factory.mktemp("synthetic_judge") / "classifier.pt", batch_size=64)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch hub's cache pointed at an empty folder, as on a machine that never downloaded any weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def standin_alexnet(tmp_path):
    """An AlexNet state dict in torchvision's layout. The test needs weights to exist, not to be ImageNet's."""
    path = tmp_path / "elsewhere" / "my_alexnet.pth"
    path.parent.mkdir()
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path
