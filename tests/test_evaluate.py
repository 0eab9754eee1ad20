"""ddpmkit evaluate, end to end on the tiny model: the report holds the numbers and how to reproduce them."""
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.config import DataConfig
from ddpmkit.data import load_images, to_uint8
from ddpmkit.errors import DdpmkitError
from ddpmkit.evaluate import evaluate, read_samples
from ddpmkit.metrics.classifier import train_classifier
from ddpmkit.metrics.domain import file_sha256
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.viz import write_samples


def test_evaluate_a_checkpoint(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge, tmp_path):
    report = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=2, guidance=1.0,
                      data_root=str(tiny_idx_root), classifier=tiny_judge, cache_dir=tmp_path, progress=False)
    assert set(report["metrics"]) == {"fd_mnist_classifier", "classifier_is", "classifier_is_std", "accuracy",
                                      "precision", "recall"}
    assert report["samples"]["num_samples"] == 20 and report["samples"]["guidance"] == 1.0
    assert len(report["samples"]["checkpoint_sha256"]) == 64 and len(report["feature_network"]["sha256"]) == 64
    key = report["real"].pop("statistics_key")   # readable parts, then the hashes of the images and the judge
    assert key.startswith("fd_mnist_test_16x1x8x8_images-") and file_sha256(tiny_judge)[:16] in key
    assert report["real"] == {"dataset": "mnist", "split": "test", "count": 16, "source": str(tiny_idx_root),
                              "image_shape": [1, 8, 8], "resize_mode": "pad", "statistics": "computed"}
    again = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=2, guidance=1.0,
                     data_root=str(tiny_idx_root), classifier=tiny_judge, cache_dir=tmp_path, batch_size=7,
                     progress=False)
    assert again["real"]["statistics"] == "cache"
    assert again["metrics"]["fd_mnist_classifier"] == pytest.approx(report["metrics"]["fd_mnist_classifier"],
                                                                    rel=1e-5)


def test_saved_samples_give_the_same_numbers_when_read_back(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge,
                                                            tmp_path):
    common = {"data_root": str(tiny_idx_root), "classifier": tiny_judge, "cache_dir": None, "progress": False}
    generated = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=3,
                         save_samples=tmp_path / "s.npz", **common)
    read_back = evaluate(samples=generated["samples"]["saved"], dataset="mnist", **common)
    for name in ("fd_mnist_classifier", "classifier_is", "accuracy"):
        assert read_back["metrics"][name] == pytest.approx(generated["metrics"][name], abs=1e-6), name


def test_every_evaluated_sample_has_its_own_seed(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge, tmp_path):
    # FD and precision/recall assume independent draws: class c must not reuse the starting noises of class 0.
    report = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=2, guidance=1.0, seed=5,
                      metrics=("accuracy",), data_root=str(tiny_idx_root), classifier=tiny_judge, cache_dir=None,
                      save_samples=tmp_path / "s.npz", progress=False)
    saved = np.load(tmp_path / "s.npz")
    seeds, labels = saved["seeds"].tolist(), saved["labels"].tolist()
    assert seeds == list(range(5, 25)) and report["samples"]["seeds"] == "5..24"
    assert labels == [c for c in range(10) for _ in range(2)]   # two of each class, class after class
    expected = DiffusionSampler(tiny_conditional_checkpoint).generate(seeds, labels, sampler="ddim", steps=2,
                                                                      guidance=1.0, progress=False)
    assert np.array_equal(saved["arr_0"], to_uint8(expected, zero_one=True).permute(0, 2, 3, 1).numpy())


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


def test_evaluate_errors(tiny_conditional_checkpoint, tiny_judge, tmp_path):
    with pytest.raises(DdpmkitError, match="exactly one of"):
        evaluate()
    with pytest.raises(DdpmkitError, match="multiple of the model's 10 classes"):
        evaluate(tiny_conditional_checkpoint, num_samples=15, classifier=tiny_judge, progress=False)
    with pytest.raises(DdpmkitError, match="unknown metric"):
        evaluate(tiny_conditional_checkpoint, metrics=("fid_inception",))
    with pytest.raises(DdpmkitError, match="trained with data.resize_mode=pad.*leave --resize-mode out"):
        evaluate(tiny_conditional_checkpoint, resize_mode="resize", progress=False)
    with pytest.raises(DdpmkitError, match="resize_mode must be pad or resize, got 'crop'"):
        evaluate(samples=tmp_path, dataset="mnist", resize_mode="crop")


def test_inception_metrics_stop_with_what_to_download(tiny_conditional_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DdpmkitError) as err:
        evaluate(tiny_conditional_checkpoint, metrics=("fid",), progress=False)
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--inception-weights" in message and "\n" not in message
    with pytest.raises(DdpmkitError, match="not found at /nonexistent/inception.pth"):
        evaluate(tiny_conditional_checkpoint, metrics=("kid",), inception_weights="/nonexistent/inception.pth")


def test_an_untrained_model_scores_far_worse_than_a_trained_one(synthetic_root, synthetic_judge, tmp_path):
    # The same tiny U-Net after 1 and after 200 training steps on the synthetic two-class images (a bright left or
    # right half), sampled alike: the trained model's FD must be several times lower and its IS higher.
    from ddpmkit.config import config_from_dict
    from ddpmkit.train import train

    from conftest import tiny_config_dict

    scores = {}
    for steps in (1, 200):
        d = tiny_config_dict(synthetic_root)
        d["train"].update(steps=steps, batch_size=32, lr=3e-3, warmup_steps=min(20, steps), ema_decay=0.9,
                          eval_every=0, checkpoint_every=10**6, log_every=100)
        checkpoint = train(config_from_dict(d), tmp_path / f"run_{steps}", progress=False)
        scores[steps] = evaluate(checkpoint, num_samples=200, sampler="ddim", steps=10,
                                 data_root=str(synthetic_root), classifier=synthetic_judge, cache_dir=tmp_path,
                                 progress=False)["metrics"]
    untrained, trained = scores[1], scores[200]
    assert untrained["fd_mnist_classifier"] > 3 * trained["fd_mnist_classifier"], scores  # measured: 21.0 vs 2.8
    assert trained["classifier_is"] > untrained["classifier_is"] + 0.3, scores             # 1.75 vs 1.14


def test_reconstruction_and_diversity(tiny_conditional_checkpoint, tiny_idx_root, empty_hub, standin_alexnet):
    report = evaluate(tiny_conditional_checkpoint, num_samples=20, sampler="ddim", steps=2,
                      metrics=("reconstruction", "diversity"), data_root=str(tiny_idx_root), inversion_steps=(2, 10),
                      inversion_images=6, lpips_weights=standin_alexnet, progress=False)
    for steps in (2, 10):
        row = report["reconstruction"]["per_steps"][str(steps)]
        assert set(row) == {"psnr", "ssim", "lpips", "latent_rms", "seconds"}
        assert report["metrics"][f"psnr_inversion_{steps}"] == row["psnr"] and 0 <= row["lpips"]
        assert -1 <= row["ssim"] <= 1 and row["latent_rms"] > 0
    assert report["reconstruction"]["images"] == 6 and report["reconstruction"]["labels"] == "true classes"
    assert report["metrics"]["lpips_diversity"] > 0
    assert report["diversity"]["pairs"] == 10   # two samples of each of the 10 classes: one pair per class
    assert "notes" not in report


def test_lpips_is_skipped_with_a_note_when_its_weights_are_missing(tiny_conditional_checkpoint, tiny_idx_root,
                                                                   empty_hub, capsys):
    assert main(["evaluate", "--checkpoint", str(tiny_conditional_checkpoint), "--metrics", "reconstruction,diversity",
                 "--data-root", str(tiny_idx_root), "--num-samples", "20", "--sampler", "ddim", "--steps", "2",
                 "--inversion-steps", "5", "--inversion-images", "4", "--output-dir", str(empty_hub.parent.parent),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: LPIPS skipped" in out and "alexnet-owt-7be5be79.pth" in out
    report = json.loads((empty_hub.parent.parent / "metrics.json").read_text())
    assert set(report["metrics"]) == {"psnr_inversion_5", "ssim_inversion_5"}   # PSNR and SSIM need no weights
    assert len(report["notes"]) == 1


def test_reconstruction_and_diversity_errors(tiny_conditional_checkpoint, tmp_path, empty_hub, standin_alexnet):
    with pytest.raises(DdpmkitError, match="reconstruction .* --checkpoint"):
        evaluate(samples=tmp_path, dataset="mnist", metrics=("reconstruction",))
    with pytest.raises(DdpmkitError, match="at least two samples of one class"):
        evaluate(tiny_conditional_checkpoint, num_samples=10, sampler="ddim", steps=2, metrics=("diversity",),
                 lpips_weights=standin_alexnet, progress=False)


def test_an_old_torch_fidelity_stops_prc_before_sampling(tiny_conditional_checkpoint, monkeypatch):
    import torch_fidelity

    monkeypatch.setattr(torch_fidelity, "__version__", "0.3.0")
    monkeypatch.setattr(DiffusionSampler, "generate", lambda *a, **k: pytest.fail("sampled before the check"))
    with pytest.raises(DdpmkitError, match=r"needs torch-fidelity>=0\.4, but 0\.3\.0 is installed"):
        evaluate(tiny_conditional_checkpoint, num_samples=10, metrics=("prc",), progress=False)


def test_evaluate_reads_what_sample_writes(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge, tmp_path,
                                           capsys):
    # The output folder, its images/ subfolder and its samples.npz hold the same samples: same numbers, labels
    # (from class_C_seed_NNNNN.png names) included.
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "all", "--num-samples", "2",
                 "--sampler", "ddim", "--steps", "2", "--output-dir", str(out), "--no-progress"]) == 0
    assert {Image.open(p).mode for p in (out / "images").iterdir()} == {"L"}   # the model's one channel
    reports = []
    for i, source in enumerate((out, out / "images", out / "samples.npz")):
        assert main(["evaluate", "--samples", str(source), "--dataset", "mnist", "--data-root", str(tiny_idx_root),
                     "--classifier", str(tiny_judge), "--no-cache", "--output-dir", str(tmp_path / f"eval{i}"),
                     "--no-progress"]) == 0, capsys.readouterr().err
        reports.append(json.loads((tmp_path / f"eval{i}" / "metrics.json").read_text()))
    assert set(reports[0]["metrics"]) == {"fd_mnist_classifier", "classifier_is", "classifier_is_std", "accuracy",
                                          "precision", "recall"}
    assert reports[0]["samples"]["num_samples"] == 20
    assert reports[0]["metrics"] == reports[1]["metrics"] == reports[2]["metrics"]


def test_write_samples_keeps_each_image_in_its_channel_count(tmp_path):
    g = torch.Generator().manual_seed(0)
    for channels, mode in ((1, "L"), (3, "RGB")):
        images = torch.rand(4, channels, 8, 8, generator=g)
        write_samples(images, tmp_path / mode, seeds=[3, 4, 5, 6], labels=[1, 0, 1, 0])
        picture = Image.open(tmp_path / mode / "images" / "class_0_seed_00004.png")
        assert picture.mode == mode
        assert np.array_equal(np.asarray(picture).reshape(8, 8, channels),
                              to_uint8(images[1], zero_one=True).permute(1, 2, 0).numpy())
        read, labels = read_samples(tmp_path / mode)
        assert read.shape == (4, channels, 8, 8) and labels.tolist() == [0, 0, 1, 1]   # class after class, by seed
        assert torch.equal(read[0], to_uint8(images[1], zero_one=True).float() / 255)


def test_greyscale_samples_stored_as_rgb_count_as_one_channel(tiny_idx_root, tiny_judge, tmp_path):
    # Sample folders written before the fix hold 1-channel samples as RGB PNGs with three equal channels.
    grey = np.random.default_rng(0).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    (tmp_path / "old").mkdir()
    for i, image in enumerate(grey):
        Image.fromarray(image).convert("RGB").save(tmp_path / "old" / f"seed_{i:05d}.png")
    np.savez(tmp_path / "s.npz", arr_0=grey[..., None])
    common = {"dataset": "mnist", "data_root": str(tiny_idx_root), "classifier": tiny_judge, "cache_dir": None,
              "progress": False}
    from_rgb = evaluate(samples=tmp_path / "old", **common)
    assert from_rgb["metrics"] == evaluate(samples=tmp_path / "s.npz", **common)["metrics"]
    assert from_rgb["real"]["image_shape"] == [1, 8, 8]


def test_unreadable_sample_folders_give_one_line_errors(tmp_path):
    def folder(name, *pictures):
        (tmp_path / name).mkdir()
        for i, picture in enumerate(pictures):
            picture.save(tmp_path / name / f"seed_{i:05d}.png")
        return tmp_path / name

    small, large = Image.new("L", (8, 8)), Image.new("L", (10, 10))
    cases = {folder("sizes", small, small, large): "seed_00002.png: 10x10 L, but seed_00000.png is 8x8 L",
             folder("mode", small, Image.new("RGBA", (8, 8))): "seed_00001.png: mode RGBA",
             folder("kinds", small, Image.new("RGB", (8, 8))): "seed_00001.png: 8x8 RGB, but seed_00000.png is 8x8 L"}
    broken = folder("broken", small)
    (broken / "seed_00001.png").write_bytes(b"not a png")
    cases[broken] = "seed_00001.png is not a readable image"
    for path, message in cases.items():
        with pytest.raises(DdpmkitError, match=message) as err:
            read_samples(path)
        assert "\n" not in str(err.value)


def test_a_training_fd_on_other_real_images_does_not_poison_evaluate(tiny_conditional_checkpoint, tiny_idx_root,
                                                                     tiny_judge, tmp_path):
    # A run with data.max_images measures its in-training FD on the real images its config gives; whatever those
    # are, the statistics it caches must not stand in for those of the images evaluate compares with.
    from ddpmkit.train import TrainingFD

    model = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")

    def training_fd(data_changes: dict, cache_dir):
        cfg = replace(model.config, data=replace(model.config.data, **data_changes),
                      train=replace(model.config.train, fd_samples=10, fd_steps=2, fd_classifier=str(tiny_judge)))
        TrainingFD(cfg, model.image_shape, model.class_names, cache_dir=cache_dir)(model.model, model.schedule,
                                                                                   model.device)

    common = {"num_samples": 20, "sampler": "ddim", "steps": 2, "metrics": ("fd",), "data_root": str(tiny_idx_root),
              "classifier": tiny_judge, "progress": False}
    training_fd({"max_images": 6}, tmp_path / "shared")
    shared = evaluate(tiny_conditional_checkpoint, cache_dir=tmp_path / "shared", **common)
    alone = evaluate(tiny_conditional_checkpoint, cache_dir=None, **common)
    assert shared["metrics"] == pytest.approx(alone["metrics"], rel=1e-6)
    assert shared["real"]["count"] == 16
    training_fd({}, tmp_path / "same_images")   # the same real images as evaluate's: one cache entry serves both
    assert evaluate(tiny_conditional_checkpoint, cache_dir=tmp_path / "same_images",
                    **common)["real"]["statistics"] == "cache"


@pytest.fixture(scope="module")
def six_pixel_root(tmp_path_factory):
    """Two-class 6x6 images, which models and judges see at 8x8 (padded or resized)."""
    from conftest import write_two_class_idx

    return write_two_class_idx(tmp_path_factory.mktemp("six_pixel"), 6, train=(64, 0), test=(32, 1))


@pytest.mark.parametrize("data_changes", [{"resize_mode": "resize"}, {"channels": 3}])
def test_evaluate_measures_against_the_images_the_model_saw(six_pixel_root, tmp_path, data_changes):
    from ddpmkit.config import config_from_dict
    from ddpmkit.metrics.classifier import load_classifier
    from ddpmkit.metrics.domain import add_fake, add_real, classifier_fd_metric
    from ddpmkit.train import train

    from conftest import tiny_config_dict

    d = tiny_config_dict(six_pixel_root)
    d["data"].update(data_changes)
    d["train"].update(steps=2, eval_every=0)
    checkpoint = train(config_from_dict(d), tmp_path / "run", progress=False)
    seen = DataConfig(**d["data"])   # the real images as the model saw them in training
    judge = tmp_path / "judge.pt"
    torch.save(train_classifier(seen, epochs=1, batch_size=16, progress=False), judge)
    # No data_root: evaluate reads the real images from the run's own data.root.
    report = evaluate(checkpoint, num_samples=12, sampler="ddim", steps=2, metrics=("fd",), classifier=judge,
                      cache_dir=tmp_path / "cache", save_samples=tmp_path / "s.npz", progress=False)

    metric = classifier_fd_metric(load_classifier(judge)[0], (seen.channels or 1, 8, 8))
    add_real(metric, load_images(seen, "test").images, "unused", cache_dir=None, progress=False)
    add_fake(metric, read_samples(tmp_path / "s.npz")[0], progress=False)
    assert report["metrics"]["fd_mnist_classifier"] == pytest.approx(float(metric.compute()), rel=1e-5)
    assert report["real"]["count"] == 32 and report["real"]["image_shape"] == [seen.channels or 1, 8, 8]
    # The same samples read back, against the real images fitted the same way: the same number, and (sharing the
    # cache) no statistics of differently fitted images are read instead.
    common = {"dataset": "mnist", "data_root": str(six_pixel_root), "metrics": ("fd",), "classifier": judge,
              "cache_dir": tmp_path / "cache", "progress": False}
    read_back = evaluate(samples=tmp_path / "s.npz", resize_mode=seen.resize_mode, **common)
    assert read_back["metrics"] == pytest.approx(report["metrics"], rel=1e-5)
    # The .npz records how the model's images were fitted: without --resize-mode the real images are fitted so.
    assert evaluate(samples=tmp_path / "s.npz", **common)["metrics"] == read_back["metrics"]
    if seen.resize_mode == "resize":
        with pytest.raises(DdpmkitError, match="trained with data.resize_mode=resize"):
            evaluate(samples=tmp_path / "s.npz", resize_mode="pad", **common)


# -- the judge must fit the images it scores (issue 24, defect 6) ----------------------------------------------------

def _refused(argv: list[str], out, capsys) -> str:
    """Run ``evaluate`` through the CLI; it must stop with one line on stderr and write nothing. Returns the line."""
    capsys.readouterr()
    assert main(["evaluate", *argv, "--no-cache", "--no-progress", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), "evaluate wrote something before refusing"
    return err


def _npz(path, shape, **extra):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.savez(path, arr_0=images, **extra)
    return path


@pytest.mark.parametrize("shape,extra,expected", [
    ((12, 16, 16, 1), {}, r"resolution 16x16 .*8x8"),
    ((12, 8, 8, 3), {}, r"channels 3 .*1"),
    ((12, 8, 8, 1), {"labels": np.arange(12) % 2, "class_names": np.array(["1", "0"] + [str(i) for i in range(2, 10)])},
     r"classes: the same classes in another order"),
    ((12, 8, 8, 1), {"labels": np.arange(12)}, r"classes: labels up to 11 .*10 classes"),
    ((12, 8, 8, 1), {"resize_mode": np.array("resize")}, r"resize mode resize .*pad"),
])
def test_evaluate_samples_refuses_a_judge_that_does_not_fit(tiny_idx_root, tiny_judge, tmp_path, capsys, shape,
                                                             extra, expected):
    samples = _npz(tmp_path / "s.npz", shape, **extra)
    err = _refused(["--samples", str(samples), "--dataset", "mnist", "--data-root", str(tiny_idx_root),
                    "--classifier", str(tiny_judge)], tmp_path / "eval", capsys)
    assert re.search(expected, err) and "--classifier" in err, err


def test_evaluate_samples_refuses_real_images_fitted_unlike_the_judge(tiny_idx_root, tiny_judge, tmp_path, capsys):
    # The judge saw its training images padded to size; --resize-mode resize would score against resized ones.
    samples = _npz(tmp_path / "s.npz", (12, 8, 8, 1))
    err = _refused(["--samples", str(samples), "--dataset", "mnist", "--data-root", str(tiny_idx_root),
                    "--classifier", str(tiny_judge), "--resize-mode", "resize"], tmp_path / "eval", capsys)
    assert "resize mode resize" in err and "pad" in err, err
    # Samples that record how their model's images were fitted must be compared with real images fitted alike.
    recorded = _npz(tmp_path / "r.npz", (12, 8, 8, 1), resize_mode=np.array("pad"))
    err = _refused(["--samples", str(recorded), "--dataset", "mnist", "--data-root", str(tiny_idx_root),
                    "--classifier", str(tiny_judge), "--resize-mode", "resize"], tmp_path / "eval", capsys)
    assert "--resize-mode resize" in err and "resize_mode=pad" in err, err


def _variant(checkpoint, path, data=None, class_names=None):
    """The tiny model's checkpoint with another data config or other class names (the same weights)."""
    from ddpmkit.checkpoint import read_checkpoint, save_checkpoint

    state = {k: v for k, v in read_checkpoint(checkpoint).items() if k != "sha256"}
    state["config"] = {**state["config"], "data": {**state["config"]["data"], **(data or {})}}
    if class_names is not None:
        state["class_names"] = class_names
    return save_checkpoint(state, path)


@pytest.mark.parametrize("variant,classifier,expected", [
    ({}, "mnist", r"resolution 8x8 .*32x32"),   # the shipped judge sees 32x32 digits
    ({"data": {"resize_mode": "resize"}}, None, r"resize mode resize .*pad"),
    ({"class_names": [str(i) for i in range(9, -1, -1)]}, None, r"same classes in another order"),
    ({"class_names": [f"c{i}" for i in range(10)]}, None, r"classes c0, c1, c2, \.\.\. .*0, 1, 2, \.\.\."),
])
def test_evaluate_checkpoint_refuses_a_judge_that_does_not_fit(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge,
                                                               tmp_path, capsys, variant, classifier, expected):
    checkpoint = _variant(tiny_conditional_checkpoint, tmp_path / "model.pt", **variant)
    err = _refused(["--checkpoint", str(checkpoint), "--data-root", str(tiny_idx_root), "--num-samples", "10",
                    "--sampler", "ddim", "--steps", "2", "--classifier", classifier or str(tiny_judge),
                    "--save-samples"], tmp_path / "eval", capsys)
    assert re.search(expected, err) and "--classifier" in err, err


def test_what_sample_writes_records_its_classes_and_resizing(tiny_conditional_checkpoint, tiny_idx_root, tiny_judge,
                                                             tmp_path, capsys):
    from ddpmkit.evaluate import read_sample_info

    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "0,1", "--num-samples", "2",
                 "--sampler", "ddim", "--steps", "2", "--output-dir", str(out), "--no-progress"]) == 0
    saved = np.load(out / "samples.npz")
    assert saved["class_names"].tolist() == [str(i) for i in range(10)] and saved["resize_mode"].item() == "pad"
    assert read_sample_info(out) == read_sample_info(out / "samples.npz") == {
        "class_names": [str(i) for i in range(10)], "resize_mode": "pad"}
    assert read_sample_info(out / "images") == {}   # a plain folder of PNGs records nothing
