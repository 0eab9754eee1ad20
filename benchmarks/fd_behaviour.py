"""How FD-<dataset>-classifier behaves on real data: real vs real, disjoint halves, added noise and blur.

Run by hand:  python benchmarks/fd_behaviour.py --dataset fashion_mnist --out docs/fd_behaviour.json
Prints a table and writes JSON (the numbers in docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from ddpmkit.config import DataConfig
from ddpmkit.data import load_images
from ddpmkit.metrics.classifier import load_classifier
from ddpmkit.metrics.domain import add_fake, add_real, classifier_fd_metric


def fd(classifier, real_uint8, fake_float, cache_key=None, cache_dir=None):
    metric = classifier_fd_metric(classifier, tuple(real_uint8.shape[1:]))
    add_real(metric, real_uint8, cache_key or "unused", cache_dir, progress=False)
    add_fake(metric, fake_float, progress=False)
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--root", default="")
    parser.add_argument("--out", default="fd_behaviour.json")
    args = parser.parse_args()
    start = time.perf_counter()
    classifier, info = load_classifier(args.dataset)
    cfg = DataConfig(dataset=args.dataset, root=args.root, download=False)
    train, test = load_images(cfg, "train").images, load_images(cfg, "test").images
    g = torch.Generator().manual_seed(0)
    train_float = train[:10000].float() / 255
    rows = [("test vs train (10k)", fd(classifier, test, train_float)),
            ("test 1st half vs 2nd half (5k each)", fd(classifier, test[:5000], test[5000:].float() / 255))]
    for sigma in (0.05, 0.1, 0.2, 0.4):
        noisy = (train_float + sigma * torch.randn(train_float.shape, generator=g)).clamp(0, 1)
        rows.append((f"test vs train + Gaussian noise sigma={sigma}", fd(classifier, test, noisy)))
    for sigma in (0.5, 1.0, 2.0):
        blurred = gaussian_blur(train_float, kernel_size=2 * round(3 * sigma) + 1, sigma=sigma)
        rows.append((f"test vs train blurred sigma={sigma} px", fd(classifier, test, blurred)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:10.4f}")
    report = {"dataset": args.dataset, "classifier_sha256": info["sha256"], "rows": dict(rows),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 1)}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
