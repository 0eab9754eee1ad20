"""FD on the judge classifier's features behaves as a distance should: small between two samples of the same
distribution, growing monotonically with noise and blur, independent of the batch size. On synthetic data always,
on real Fashion-MNIST when it is installed."""
import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from conftest import FASHION_MNIST_DIR
from ddpmkit.config import DataConfig
from ddpmkit.data import load_images
from ddpmkit.errors import DdpmkitError
from ddpmkit.metrics.classifier import default_classifier_path, load_classifier
from ddpmkit.metrics.domain import (add_fake, add_real, classifier_fd_metric, classifier_is_metric,
                                   classifier_precision_recall, seeded_compute)


def fd(classifier, real_uint8, fake_float, batch_size=1000, cache_dir=None, key="k"):
    metric = classifier_fd_metric(classifier, tuple(real_uint8.shape[1:]))
    add_real(metric, real_uint8, key, cache_dir, batch_size=batch_size, progress=False)
    add_fake(metric, fake_float, batch_size=batch_size, progress=False)
    return float(metric.compute())


def noisy(images_uint8, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = images_uint8.float() / 255
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def blurred(images_uint8, sigma):
    x = images_uint8.float() / 255
    return x if sigma == 0 else gaussian_blur(x, kernel_size=2 * round(3 * sigma) + 1, sigma=sigma)


def check_behaviour(classifier, train_uint8, test_uint8, cache_dir):
    """The properties of point 4 of the evaluation issue, for any classifier and data."""
    half = len(test_uint8) // 2
    same = fd(classifier, test_uint8[:half], test_uint8[half:].float() / 255)      # disjoint halves
    test = {"cache_dir": cache_dir, "key": "test"}  # the test set's statistics, computed once
    train_vs_test = fd(classifier, test_uint8, train_uint8.float() / 255, **test)
    noise = [fd(classifier, test_uint8, noisy(train_uint8, s), **test) for s in (0.0, 0.1, 0.3, 0.6)]
    blur = [fd(classifier, test_uint8, blurred(train_uint8, s), **test) for s in (0.0, 0.6, 1.0, 2.0)]
    assert noise == sorted(noise) and blur == sorted(blur), (noise, blur)
    assert same < 0.25 * noise[-1] and train_vs_test < 0.25 * noise[-1], (same, train_vs_test, noise)
    return same, train_vs_test, noise, blur


@pytest.fixture(scope="module")
def tiny_classifier(synthetic_judge):
    return load_classifier(synthetic_judge)[0]


def test_fd_behaves_on_synthetic_data(synthetic_root, tiny_classifier, tmp_path):
    cfg = DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8)
    check_behaviour(tiny_classifier, load_images(cfg, "train").images, load_images(cfg, "test").images, tmp_path)


def test_fd_does_not_depend_on_batch_size_and_the_cache_is_exact(synthetic_root, tiny_classifier, tmp_path):
    cfg = DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8)
    real, fake = load_images(cfg, "train").images, noisy(load_images(cfg, "test").images, 0.1)
    a = fd(tiny_classifier, real, fake, batch_size=64)
    b = fd(tiny_classifier, real, fake, batch_size=5)
    cached_first = fd(tiny_classifier, real, fake, cache_dir=tmp_path)
    cached_again = fd(tiny_classifier, real[:1], fake, cache_dir=tmp_path)  # real images unused: read from cache
    assert a == pytest.approx(b, rel=1e-6) and cached_first == pytest.approx(a, rel=1e-6)
    assert cached_again == cached_first


def test_feature_network_stays_in_eval_mode(tiny_classifier):
    metric = classifier_fd_metric(tiny_classifier, (1, 8, 8))
    metric.train()
    assert not tiny_classifier.training and not metric.inception.training


def test_classifier_inception_score_is_high_for_confident_diverse_images(synthetic_root, tiny_classifier):
    real = load_images(DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8), "train").images
    score = classifier_is_metric(tiny_classifier, splits=1)
    add_fake(score, real.float() / 255, progress=False)
    mean, _ = score.compute()
    assert 1.0 <= float(mean) <= 2.0 + 1e-4  # two balanced classes: IS is at most 2
    assert float(mean) > 1.5


def test_precision_and_recall_separate_fidelity_from_coverage(synthetic_root, tiny_classifier):
    # Kynkaanniemi et al. 2019: real vs real gives high precision and recall; samples of one class only (a dropped
    # mode) keep precision but lose recall; noise images lose precision.
    real = load_images(DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8), "train")
    test = load_images(DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8), "test").images
    other = real.images[:1000].float() / 255
    one_class = real.images[real.labels == 0][:500].float() / 255
    precision, recall, count = classifier_precision_recall(tiny_classifier, test, other)
    assert count == 1000 and precision > 0.75 and recall > 0.75, (precision, recall)  # 0.83, 0.86 measured
    precision, recall, _ = classifier_precision_recall(tiny_classifier, test, one_class)
    assert precision > 0.75 and recall < 0.55, (precision, recall)                    # 0.83, 0.43
    precision, _, _ = classifier_precision_recall(tiny_classifier, test, noisy(real.images[:1000], 0.6))
    assert precision < 0.1, precision                                                  # 0.0


def test_inception_score_is_reproducible(synthetic_root, tiny_classifier):
    # torchmetrics shuffles images into the IS splits with the global RNG; evaluate seeds that shuffle.
    real = load_images(DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8), "train").images[:500]
    score = classifier_is_metric(tiny_classifier, splits=10)
    add_fake(score, real.float() / 255, progress=False)
    state = torch.random.get_rng_state()
    first, second = seeded_compute(score), seeded_compute(score)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(torch.random.get_rng_state(), state)   # the caller's random stream is left alone


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()
                    or not default_classifier_path("fashion_mnist").is_file(),
                    reason=f"needs Fashion-MNIST in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_fd_behaves_on_real_fashion_mnist(tmp_path):
    classifier, _ = load_classifier("fashion_mnist")
    cfg = DataConfig(dataset="fashion_mnist", download=False)
    train, test = load_images(cfg, "train").images[:3000], load_images(cfg, "test").images[:3000]
    same, train_vs_test, noise, _ = check_behaviour(classifier, train, test, tmp_path)
    assert train_vs_test < 0.05 * noise[-1]


def test_precision_recall_says_which_torch_fidelity_it_needs(synthetic_root, tiny_classifier, monkeypatch):
    # torch-fidelity 0.3 has no metric_prc module; precision/recall arrived in 0.4.
    import torch_fidelity

    real = load_images(DataConfig(dataset="mnist", root=str(synthetic_root), image_size=8), "test").images[:20]
    monkeypatch.setattr(torch_fidelity, "__version__", "0.3.0")
    with pytest.raises(DdpmkitError) as err:
        classifier_precision_recall(tiny_classifier, real, real.float() / 255)
    message = str(err.value)
    assert "0.3.0" in message and "pip install 'torch-fidelity>=0.4'" in message and "\n" not in message
