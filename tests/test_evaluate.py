"""ddpmkit evaluate, end to end on the tiny model: the report holds the numbers and how to reproduce them."""
import json

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.config import DataConfig
from ddpmkit.errors import DdpmkitError
from ddpmkit.evaluate import evaluate, read_samples
from ddpmkit.metrics.classifier import train_classifier


@pytest.fixture(scope="module")
def tiny_judge(tiny_idx_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("judge") / "tiny_classifier.pt"
    torch.save(train_classifier(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8), epochs=2,
                                batch_size=16, progress=False), path)
    return path


def test_evaluate_a_checkpoint(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge, tmp_path):
    report = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=2, guidance=1.0,
                      data_root=str(tiny_idx_root), classifier=tiny_judge, cache_dir=tmp_path, progress=False)
    assert set(report["metrics"]) == {"fd_mnist_classifier", "classifier_is", "classifier_is_std", "accuracy"}
    assert report["samples"]["num_samples"] == 20 and report["samples"]["guidance"] == 1.0
    assert len(report["samples"]["checkpoint_sha256"]) == 64 and len(report["feature_network"]["sha256"]) == 64
    assert report["real"] == {"dataset": "mnist", "split": "test", "count": 16, "source": str(tiny_idx_root),
                              "statistics": "computed"}
    again = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=2, guidance=1.0,
                     data_root=str(tiny_idx_root), classifier=tiny_judge, cache_dir=tmp_path, batch_size=7,
                     progress=False)
    assert again["real"]["statistics"] == "cache"
    assert again["metrics"]["fd_mnist_classifier"] == pytest.approx(report["metrics"]["fd_mnist_classifier"],
                                                                    rel=1e-5)


def test_evaluate_samples_from_npz_via_the_cli(tiny_idx_root, tiny_judge, tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images)
    assert read_samples(tmp_path / "s.npz")[0].shape == (12, 1, 8, 8)
    out = tmp_path / "eval"
    assert main(["evaluate", "--samples", str(tmp_path / "s.npz"), "--dataset", "mnist", "--data-root",
                 str(tiny_idx_root), "--classifier", str(tiny_judge), "--no-cache", "--output-dir", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "fd_mnist_classifier" in printed and "classifier_is" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["samples"]["num_samples"] == 12 and "accuracy" not in report["metrics"]


def test_evaluate_errors(tiny_conditional_checkpoint, tmp_path):
    with pytest.raises(DdpmkitError, match="exactly one of"):
        evaluate()
    with pytest.raises(DdpmkitError, match="multiple of the model's 10 classes"):
        evaluate(tiny_conditional_checkpoint, num_samples=15, progress=False)
    with pytest.raises(DdpmkitError, match="unknown metric"):
        evaluate(tiny_conditional_checkpoint, metrics=("fid_inception",))


def test_inception_metrics_stop_with_what_to_download(tiny_conditional_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DdpmkitError) as err:
        evaluate(tiny_conditional_checkpoint, metrics=("fid",), progress=False)
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--inception-weights" in message and "\n" not in message
    with pytest.raises(DdpmkitError, match="not found at /nonexistent/inception.pth"):
        evaluate(tiny_conditional_checkpoint, metrics=("kid",), inception_weights="/nonexistent/inception.pth")
