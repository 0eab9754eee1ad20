"""The judge classifier: it learns, it round-trips, the shipped weights hold their recorded accuracy."""
import pytest
import torch

from conftest import FASHION_MNIST_DIR, MNIST_10K_DIR
from ddpmkit.config import DataConfig
from ddpmkit.data import load_images
from ddpmkit.errors import DdpmkitError
from ddpmkit.metrics.classifier import accuracy, default_classifier_path, load_classifier, train_classifier


def test_classifier_learns_the_tiny_classes(tiny_idx_root, tmp_path):
    state = train_classifier(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8), epochs=15,
                             batch_size=16, progress=False)
    assert state["test_accuracy"] >= 0.9  # bright-left vs bright-right halves: trivially separable
    torch.save(state, tmp_path / "c.pt")
    model, info = load_classifier(tmp_path / "c.pt")
    images = load_images(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8), "test")
    assert accuracy(model, images.images, images.labels) == pytest.approx(state["test_accuracy"])
    assert len(info["sha256"]) == 64


def test_missing_classifier_says_how_to_train_one(tmp_path):
    with pytest.raises(DdpmkitError, match="ddpmkit classifier train --dataset"):
        load_classifier(tmp_path / "none.pt")


@pytest.mark.parametrize("dataset,folder", [("fashion_mnist", FASHION_MNIST_DIR), ("mnist", MNIST_10K_DIR)])
def test_shipped_classifier_matches_its_recorded_accuracy(dataset, folder):
    if not default_classifier_path(dataset).is_file():
        pytest.skip(f"no shipped {dataset} classifier")
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{dataset} data not found in {folder}")
    model, info = load_classifier(dataset)
    cfg = DataConfig(dataset=dataset, root=str(folder), download=False)
    if info["test_source"] == "test split":
        test = load_images(cfg, "test")
        x, y = test.images, test.labels
    else:  # the last `test_images` training images were held out
        train = load_images(cfg, "train")
        x, y = train.images[-info["test_images"]:], train.labels[-info["test_images"]:]
    assert accuracy(model, x, y) == pytest.approx(info["test_accuracy"], abs=1e-4)
    assert info["test_accuracy"] > (0.88 if dataset == "fashion_mnist" else 0.97)


def test_judge_end_to_end_and_refuses_a_mismatched_classifier(tiny_idx_root, tiny_conditional_checkpoint, tmp_path,
                                                              capsys):
    import json

    from ddpmkit.cli import main

    state = train_classifier(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8), epochs=2,
                             batch_size=16, progress=False)
    torch.save(state, tmp_path / "tiny.pt")
    out = tmp_path / "judge.json"
    assert main(["classifier", "judge", "--checkpoint", str(tiny_conditional_checkpoint), "--classifier",
                 str(tmp_path / "tiny.pt"), "--guidance", "0,2", "--per-class", "1", "--sampler", "ddim",
                 "--steps", "2", "--output", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert [r["guidance"] for r in report["results"]] == [0.0, 2.0]
    assert all(r["samples"] == 10 and 0 <= r["accuracy"] <= 1 for r in report["results"])
    assert (report["sampler"], report["steps"]) == ("ddim", 2)
    assert main(["classifier", "judge", "--checkpoint", str(tiny_conditional_checkpoint), "--classifier",
                 str(tmp_path / "tiny.pt"), "--guidance", "0", "--per-class", "1", "--output", str(out),
                 "--no-progress"]) == 0
    report = json.loads(out.read_text())  # the default sampler and the steps it took (its 20, capped at T = 10)
    assert (report["sampler"], report["steps"]) == ("sde-dpm++2m", 10)
    if default_classifier_path("mnist").is_file():  # shipped: 32x32, the tiny model is 8x8
        assert main(["classifier", "judge", "--checkpoint", str(tiny_conditional_checkpoint), "--classifier",
                     "mnist", "--no-progress"]) == 2
        assert "Pass a matching --classifier" in capsys.readouterr().err


def test_classifier_train_makes_a_judge_for_other_sizes_resizing_and_channels(tiny_idx_root, tmp_path, capsys):
    # The refusal of a judge that does not fit points to 'classifier train' with these options: they must make one
    # that fits (here: images resized to 16x16, as RGB), and check_compatible must then accept it.
    from ddpmkit.cli import main
    from ddpmkit.metrics.classifier import check_compatible

    out = tmp_path / "judge.pt"
    assert main(["classifier", "train", "--dataset", "mnist", "--root", str(tiny_idx_root), "--image-size", "16",
                 "--resize-mode", "resize", "--channels", "3", "--epochs", "1", "--output", str(out),
                 "--no-progress"]) == 0
    _, info = load_classifier(out)
    assert (info["image_size"], info["resize_mode"], info["hparams"]["channels"]) == (16, "resize", 3)
    check_compatible(info, info["class_names"], 16, 3, "resize")
    with pytest.raises(DdpmkitError, match="resize mode pad where the classifier's is resize.*--resize-mode"):
        check_compatible(info, info["class_names"], 16, 3, "pad")
