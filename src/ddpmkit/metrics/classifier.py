"""A small CNN classifier for 32x32 MNIST-like images, trained on the real training set.

It judges conditional samples (the fraction classified as the requested class) and, through ``features``, is the
feature network of the offline domain metrics. It sees images exactly as the diffusion models do: padded to
32x32 and scaled to [-1, 1] (``classifier_input``).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import DataConfig
from ..data import load_images, to_model_range
from ..errors import DdpmkitError

WEIGHTS_DIR = Path(__file__).parent / "weights"


class SmallClassifier(nn.Module):
    """conv-BN-ReLU x5 with two 2x poolings, global average pooling to a 128-d feature, then a linear layer."""

    def __init__(self, num_classes: int = 10, channels: int = 1, width: int = 32):
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*block(channels, width), nn.MaxPool2d(2),
                                  *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
                                  *block(2 * width, 4 * width), *block(4 * width, 4 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(4 * width, num_classes)
        self.hparams = {"num_classes": num_classes, "channels": channels, "width": width}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate features (for Frechet distances)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _split(cfg: DataConfig, holdout: int):
    """Train and test images of a dataset; without a test split, the last ``holdout`` training images are the test."""
    train = load_images(cfg, "train")
    try:
        test = load_images(cfg, "test")
        return train.images, train.labels, test.images, test.labels, train.class_names, "test split"
    except DdpmkitError:
        n = len(train) - holdout
        return (train.images[:n], train.labels[:n], train.images[n:], train.labels[n:], train.class_names,
                f"last {holdout} training images (no test split)")


def classifier_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or float ones in [0, 1] -> the classifier's range: [-1, 1], the diffusion models' own."""
    return to_model_range(images)


@torch.no_grad()
def accuracy(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(classifier_input(images[i: i + batch_size])).argmax(1) == labels[i: i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_classifier(cfg: DataConfig, epochs: int = 2, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     holdout: int = 2000, progress: bool = True) -> dict:
    """Train a SmallClassifier on ``cfg``'s training images; returns the checkpoint dict (weights, accuracy, ...)."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test, names, test_source = _split(cfg, holdout)
    model = SmallClassifier(len(names), x_train.shape[1])
    steps = epochs * math.ceil(len(x_train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="classifier", disable=not progress)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=g).split(batch_size):
            loss = F.cross_entropy(model(classifier_input(x_train[idx])), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return {"state_dict": model.state_dict(), "hparams": model.hparams, "class_names": names,
            "dataset": cfg.dataset, "image_size": cfg.image_size, "resize_mode": cfg.resize_mode,
            "test_accuracy": accuracy(model, x_test, y_test),
            "test_images": len(x_test), "test_source": test_source, "train_images": len(x_train), "epochs": epochs}


def default_classifier_path(dataset: str) -> Path:
    return WEIGHTS_DIR / f"{dataset}_classifier.pt"


def load_classifier(path_or_dataset: str | Path) -> tuple[SmallClassifier, dict]:
    """Load a classifier from a path, or the one shipped with ddpmkit for a dataset name (mnist, fashion_mnist)."""
    path = Path(path_or_dataset)
    if not path.suffix:
        path = default_classifier_path(str(path_or_dataset))
    if not path.is_file():
        hint = (f"train one with 'ddpmkit classifier train --dataset DATASET --output {path}'"
                if path.parent != WEIGHTS_DIR or path.stem.split("_classifier")[0] in ("mnist", "fashion_mnist")
                else "ddpmkit ships classifiers for mnist and fashion_mnist only; pass --classifier PATH")
        raise DdpmkitError(f"classifier {path} not found; {hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = SmallClassifier(**state["hparams"])
    model.load_state_dict(state["state_dict"])
    state["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return model.eval(), state


@torch.no_grad()
def predict(classifier: SmallClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class predictions for float images in [0, 1] (as samplers return them), on the classifier's device."""
    device = next(classifier.parameters()).device
    classifier.eval()
    return torch.cat([classifier(classifier_input(images[i: i + batch_size].to(device))).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


# How the images of a judge that predates the resize_mode key reached their size: the shipped weights were trained on
# 28x28 images padded to 32x32.
DEFAULT_JUDGE_RESIZE_MODE = "pad"


def check_compatible(info: dict, class_names: list[str], image_size: int, channels: int | None = None,
                     resize_mode: str | None = None, judged: str = "this model") -> None:
    """Refuse, in one line naming each mismatch, to judge images unlike those the classifier was trained on: another
    resolution, channel count or resizing (pad or resize) of the real images, or classes under other names or in
    another order. None (and [] for ``class_names``) means not known, so not checked."""
    size, names = info["image_size"], list(info["class_names"])
    wanted = {"resolution": (f"{image_size}x{image_size}", f"{size}x{size}"),
              "channels": (channels, info["hparams"]["channels"]),
              "resize mode": (resize_mode, info.get("resize_mode", DEFAULT_JUDGE_RESIZE_MODE))}
    mismatches = [f"{what} {theirs} where the classifier's is {its}" for what, (theirs, its) in wanted.items()
                  if theirs is not None and theirs != its]
    if class_names and list(class_names) != names:
        mismatches.append("classes: the same classes in another order" if sorted(class_names) == sorted(names) else
                          f"classes {_some(class_names)} where the classifier's are {_some(names)}")
    if mismatches:
        raise DdpmkitError(f"the judge classifier (trained on {info['dataset']}) does not fit {judged}: "
                           f"{'; '.join(mismatches)}. Pass a matching --classifier (made by 'ddpmkit classifier train' "
                           f"with the same --image-size, --resize-mode and --channels), or measure with --metrics "
                           f"fid,kid,inception_is")


def check_labels(info: dict, labels, judged: str = "the samples") -> None:
    """Refuse class labels (without names) that the classifier has no class for."""
    if labels is not None and len(labels) and int(labels.max()) >= len(info["class_names"]):
        raise DdpmkitError(f"the judge classifier (trained on {info['dataset']}) does not fit {judged}: classes: "
                           f"labels up to {int(labels.max())} where the classifier has {len(info['class_names'])} "
                           f"classes. Pass a matching --classifier, or leave accuracy out of --metrics")


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def guided_accuracy(sampler, classifier: SmallClassifier, guidance: float, per_class: int,
                    sampler_name: str | None = None, steps: int | None = None, seed: int = 0,
                    batch_size: int = 500, progress: bool = True,
                    **options) -> dict:
    """Draw ``per_class`` samples of every class with guidance w and return the fraction the classifier assigns to
    the requested class, overall and per class; ``options`` (spacing, threshold, ...) go to the sampler."""
    classes = list(range(len(sampler.class_names)))
    images, labels = sampler.sample_classes(classes, per_class, sampler=sampler_name, steps=steps, seed=seed,
                                            guidance=guidance, batch_size=batch_size, progress=progress, **options)
    hits = predict(classifier, images) == labels
    return {"guidance": guidance, "accuracy": hits.float().mean().item(), "samples": len(labels),
            "per_class": {sampler.class_names[c]: hits[labels == c].float().mean().item() for c in classes}}
