"""Data: the IDX reader, the real Fashion-MNIST / MNIST files when present, image folders, batch order."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_MNIST_DIR, MNIST_10K_DIR, write_idx
from ddpmkit.config import Config, DataConfig, TrainConfig, config_from_dict
from ddpmkit.data import (BatchOrder, from_model_range, load_images, read_idx, stratified_choice, to_model_range,
                          to_uint8, to_unit_range)
from ddpmkit.errors import ConfigError, DdpmkitError
from ddpmkit.heldout import split_for_run

needs_fashion = pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} "
                                          "(apt-get install dataset-fashion-mnist)")
needs_mnist_10k = pytest.mark.skipif(not (MNIST_10K_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                     reason=f"MNIST 10k sample not found in {MNIST_10K_DIR}")


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(DdpmkitError, match="truncated"):
        read_idx(tmp_path / "bad")


def test_value_range_round_trip():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(images)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), images)
    assert torch.equal(to_uint8(to_model_range(images, zero_one=True), zero_one=True), images)


@pytest.mark.parametrize("zero_one", [False, True])
def test_one_conversion_each_way_between_pixel_ranges(zero_one):
    # uint8 -> [0, 1] -> the model's range and back, each step one function that agrees with the closed form.
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    unit = images.double() / 255
    assert torch.allclose(to_unit_range(images).double(), unit, atol=1e-7)
    model_range = to_model_range(images, zero_one)
    assert torch.equal(to_model_range(to_unit_range(images), zero_one), model_range)   # uint8 or [0, 1] alike
    assert torch.allclose(model_range.double(), unit if zero_one else 2 * unit - 1, atol=1e-6)
    assert torch.allclose(from_model_range(model_range, zero_one).double(), unit, atol=1e-6)
    beyond = torch.tensor([-3.0, 3.0])   # samplers without clipping overshoot: clipped to the ends
    assert from_model_range(beyond, zero_one).tolist() == [0.0, 1.0]
    assert to_uint8(beyond, zero_one).tolist() == [0, 255]


@needs_fashion
def test_real_fashion_mnist():
    cfg = DataConfig(dataset="fashion_mnist", download=False)
    train, test = load_images(cfg, "train"), load_images(cfg, "test")
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 32, 32)
    assert train.class_names[0] == "T-shirt/top" and train.num_classes == 10
    # Fashion-MNIST is balanced: exactly 6,000 training and 1,000 test images per class.
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    # Padding 28 -> 32 adds a black (0) border and keeps every original pixel.
    assert train.images[:, :, :2].max() == 0 and train.images[:, :, -2:].max() == 0
    # The mean pixel of Fashion-MNIST's training set is 0.2860 (the value torchvision users normalise with).
    assert train.images[:, :, 2:30, 2:30].float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-3)


@needs_mnist_10k
def test_real_mnist_10k_idx_folder():
    data = load_images(DataConfig(dataset="mnist", root=str(MNIST_10K_DIR), download=False, resize_mode="resize"))
    assert data.images.shape == (10000, 1, 32, 32)
    assert data.labels.min() == 0 and data.labels.max() == 9
    # Every digit is present at roughly a tenth of the set (MNIST's classes range from 9% to 11%).
    counts = torch.bincount(data.labels, minlength=10).float() / 10000
    assert counts.min() > 0.08 and counts.max() < 0.12
    with pytest.raises(DdpmkitError, match="test split not found"):
        load_images(DataConfig(dataset="mnist", root=str(MNIST_10K_DIR), download=False), "test")


def test_missing_data_names_every_way_to_get_it(tmp_path):
    with pytest.raises(DdpmkitError) as err:
        load_images(DataConfig(dataset="mnist", root=str(tmp_path), download=False))
    message = str(err.value)
    assert "data.root" in message and "internet" in message and "download is off" in message


def test_tiny_idx_and_max_images(tiny_idx_root):
    data = load_images(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8, download=False,
                                  max_images=10))
    assert data.images.shape == (10, 1, 8, 8) and data.labels.shape == (10,)
    rgb = load_images(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=16, resize_mode="resize",
                                 channels=3, download=False))
    assert rgb.images.shape == (64, 3, 16, 16)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def _write_png(path, value, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)


def test_image_folder_with_classes(tmp_path):
    for cls, value in (("cats", 10), ("dogs", 200)):
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", value)
    data = load_images(DataConfig(dataset="folder", root=str(tmp_path), image_size=8, num_workers=0))
    assert data.class_names == ["cats", "dogs"]
    assert data.images.shape == (6, 3, 8, 8)
    assert data.images[data.labels == 1].float().mean() == pytest.approx(200, abs=1)
    with pytest.raises(DdpmkitError, match="no test split"):
        load_images(DataConfig(dataset="folder", root=str(tmp_path)), "test")


def test_flat_image_folder_is_unlabelled_and_can_be_streamed(tmp_path):
    for i in range(5):
        _write_png(tmp_path / f"{i}.jpg", 30 * i, mode="L")
    data = load_images(DataConfig(dataset="folder", root=str(tmp_path), image_size=8, channels=1, in_memory="no",
                                  num_workers=0))
    assert data.images is None and len(data) == 5 and data.class_names == []
    image, label = data.dataset[2]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and label == -1


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DdpmkitError, match="no images"):
        load_images(DataConfig(dataset="folder", root=str(tmp_path)))
    with pytest.raises(DdpmkitError, match="not a folder"):
        load_images(DataConfig(dataset="folder", root=str(tmp_path / "nope")))


def test_batch_order_covers_each_epoch_once_and_is_a_pure_function():
    order = BatchOrder(num_images=10, batch_size=4, seed=3)
    stream = torch.cat([order.indices(k) for k in range(5)])  # 20 draws = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    fresh = BatchOrder(num_images=10, batch_size=4, seed=3)
    assert torch.equal(fresh.indices(3), order.indices(3))  # no hidden state: resuming at k draws the same


@pytest.mark.parametrize("num_images,batch_size", [(10, 4), (10, 5), (3, 8)])
def test_batch_order_is_the_concatenation_of_seeded_epoch_permutations(num_images, batch_size):
    # The definition, independently: epoch e is randperm(num_images) seeded by seed * 1_000_003 + e, and batch k
    # takes draws k * batch_size .. (k + 1) * batch_size - 1 of the epochs laid end to end (also when a batch
    # straddles epochs, or is larger than the dataset). Asking from the last batch back must give the same.
    seed, batches = 5, 7
    epochs = -(-batches * batch_size // num_images)
    stream = torch.cat([torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
                        for e in range(epochs)])
    order = BatchOrder(num_images, batch_size, seed)
    for k in reversed(range(batches)):
        assert torch.equal(order.indices(k), stream[k * batch_size: (k + 1) * batch_size])


# -- which images max_images keeps and which are held out ---------------------------------------------------------

UNEVEN_CLASSES = {"cats": 12, "dogs": 12, "owls": 6}  # listed class by class, the smallest last


@pytest.fixture
def uneven_folder(tmp_path):
    """30 tiny PNGs in 3 class folders of 12, 12 and 6; image k is a flat grey of 5 + 8k, so its value names it."""
    k = 0
    for cls, count in UNEVEN_CLASSES.items():
        for i in range(count):
            _write_png(tmp_path / cls / f"{i:02d}.png", 5 + 8 * k)
            k += 1
    return tmp_path


def _image_ids(images: torch.Tensor) -> list[int]:
    """Which of ``uneven_folder``'s images these are, from their grey value."""
    return [(round(v) - 5) // 8 for v in images.float().mean((1, 2, 3)).tolist()]


def _folder_config(root, **data) -> Config:
    return Config(data=DataConfig(dataset="folder", root=str(root), image_size=8, num_workers=0, **data),
                  train=TrainConfig(eval_images=5))


def _heldout_and_rest(cfg):
    """A new run's held-out images and labels, and the training images left."""
    split = split_for_run(cfg, load_images(cfg.data))
    assert split.holds_out and split.heldout.source == "held out of train"
    return split.heldout.images, split.heldout.labels, split.train


def _decoded(data) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of ``data``, through its DataLoader-facing dataset when it is not in memory."""
    if data.images is not None:
        return data.images, data.labels
    pairs = [data.dataset[i] for i in range(len(data))]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_max_images_keeps_every_class_in_proportion(uneven_folder, in_memory):
    # 7 of 12/12/6: 2.8, 2.8, 1.4 -> floors 2, 2, 1 and the 2 left over go to the largest remainders: 3, 3, 1.
    cfg = DataConfig(dataset="folder", root=str(uneven_folder), image_size=8, num_workers=0, max_images=7,
                     in_memory=in_memory)
    images, labels = _decoded(load_images(cfg))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    first_of_class = torch.tensor([0, 12, 24, 30])  # image ids where each class starts
    ids = torch.tensor(_image_ids(images))
    assert ((ids >= first_of_class[labels]) & (ids < first_of_class[labels + 1])).all()
    assert torch.equal(_decoded(load_images(cfg))[0], images)  # the same choice on every load


def test_heldout_without_test_split_keeps_every_class_and_is_disjoint_from_training(uneven_folder):
    # 5 of 12/12/6 held out: exactly 2, 2, 1; the other 25 train, so the 6-image class is in both.
    cfg = _folder_config(uneven_folder)
    images, labels, rest = _heldout_and_rest(cfg)
    assert labels.tolist() == [0, 0, 1, 1, 2] and len(rest) == 25
    assert torch.equal(torch.bincount(rest.labels), torch.tensor([10, 10, 5]))
    held, trained = _image_ids(images), _image_ids(rest.images)
    assert sorted(held + trained) == list(range(30))
    again = _heldout_and_rest(cfg)
    assert torch.equal(again[0], images) and torch.equal(again[2].images, rest.images)


def test_heldout_works_for_images_decoded_on_the_fly(uneven_folder):
    cfg = _folder_config(uneven_folder, in_memory="no")
    images, labels, rest = _heldout_and_rest(cfg)
    assert images.shape == (5, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1, 2]
    assert rest.images is None and len(rest) == 25
    trained = [rest.dataset[i] for i in range(len(rest))]
    assert [y for _, y in trained] == rest.labels.tolist()
    assert sorted(_image_ids(images) + _image_ids(torch.stack([x for x, _ in trained]))) == list(range(30))


def test_max_images_never_truncates_the_test_split(tiny_idx_root):
    cfg = DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8, download=False, max_images=10)
    assert len(load_images(cfg, "train")) == 10 and len(load_images(cfg, "test")) == 16


@needs_mnist_10k
def test_real_mnist_max_images_takes_every_digit_in_proportion():
    cfg = DataConfig(dataset="mnist", root=str(MNIST_10K_DIR), download=False)
    full = torch.bincount(load_images(cfg).labels, minlength=10)
    subset = load_images(DataConfig(dataset="mnist", root=str(MNIST_10K_DIR), download=False, max_images=1000))
    counts = torch.bincount(subset.labels, minlength=10)
    # Each digit's share of the 1,000 equals its share of the 10,000 up to the rounding of one image.
    assert counts.sum() == 1000 and ((counts - full / 10).abs() < 1).all()
    assert counts.min() >= 80 and counts.max() <= 120


def test_stratified_choice_rounds_by_largest_remainder_and_keeps_rare_classes():
    labels = torch.tensor([0] * 100 + [1] * 100 + [2])
    chosen = stratified_choice(len(labels), 10, seed=0, labels=labels)
    # 4.975, 4.975, 0.05 -> 5, 5, 0 by largest remainder; the lone class-2 image takes a place from class 0.
    assert torch.bincount(labels[chosen]).tolist() == [4, 5, 1]
    assert torch.equal(chosen, chosen.sort().values) and len(chosen.unique()) == 10
    assert torch.equal(chosen, stratified_choice(len(labels), 10, seed=0, labels=labels))
    assert not torch.equal(chosen, stratified_choice(len(labels), 10, seed=1, labels=labels))
    assert torch.bincount(labels[stratified_choice(len(labels), 2, seed=0, labels=labels)]).tolist() == [1, 1]
    assert torch.equal(stratified_choice(5, 9, seed=0), torch.arange(5))


def test_stratified_choice_without_labels_is_a_seeded_uniform_choice():
    picks = torch.stack([stratified_choice(100, 10, seed=s) for s in range(300)])
    assert all(len(p.unique()) == 10 and p.max() < 100 for p in picks)
    # Uniform: each of the 100 images is picked in about a tenth of 300 draws (30 +- 5.2 for one sd).
    hits = torch.bincount(picks.flatten(), minlength=100)
    assert hits.min() > 10 and hits.max() < 55


# -- unreadable files in an image folder --------------------------------------------------------------------------

def _folder_with_bad_files(root, classes: bool) -> None:
    """4 good PNGs (greys 0, 40, 80, 120), 3 unreadable image files, and 3 files that are no images' business."""
    def place(i):
        return root / ("ab"[i % 2]) if classes else root
    for i in range(4):
        _write_png(place(i) / f"good{i}.png", 40 * i)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(place(0) / "truncated.png")
    whole = (place(0) / "truncated.png").read_bytes()
    (place(0) / "truncated.png").write_bytes(whole[: len(whole) // 2])  # cut mid-IDAT: opens, fails to load
    (place(1) / "x.png").write_text("not an image\n")
    (place(2) / "empty.jpg").write_bytes(b"")
    (place(3) / "readme.txt").write_text("notes\n")
    (place(3) / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (place(3) / "._good3.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork: hidden, so ignored, not "bad"


@pytest.mark.parametrize("in_memory", ["yes", "no"])
@pytest.mark.parametrize("classes", [False, True], ids=["flat", "classes"])
def test_unreadable_images_are_left_out_with_one_line(tmp_path, capsys, classes, in_memory):
    _folder_with_bad_files(tmp_path, classes)
    data = load_images(DataConfig(dataset="folder", root=str(tmp_path), image_size=8, num_workers=0,
                                  in_memory=in_memory))  # bad_images=skip is the default
    images, labels = _decoded(data)
    assert sorted(images.float().mean((1, 2, 3)).round().tolist()) == [0, 40, 80, 120]
    if classes:
        assert data.class_names == ["a", "b"] and labels.tolist() == [0, 0, 1, 1]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "3 unreadable" in lines[0] and "--set data.bad_images=fail" in lines[0]
    assert all(name in lines[0] for name in ("truncated.png", "x.png", "empty.jpg"))


@pytest.mark.parametrize("classes,first_bad", [(False, "empty.jpg"), (True, "a/empty.jpg")], ids=["flat", "classes"])
def test_unreadable_images_fail_with_one_line_when_asked(tmp_path, classes, first_bad):
    _folder_with_bad_files(tmp_path, classes)
    with pytest.raises(DdpmkitError) as err:
        load_images(DataConfig(dataset="folder", root=str(tmp_path), image_size=8, num_workers=0, in_memory="no",
                               bad_images="fail"))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / first_bad))
    assert "3 of 7" in message and "data.bad_images=skip" in message


def test_a_folder_of_only_unreadable_images_has_no_images(tmp_path):
    (tmp_path / "x.png").write_text("not an image\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DdpmkitError, match="no images"):
        load_images(DataConfig(dataset="folder", root=str(tmp_path)))


def test_bad_images_is_skip_or_fail():
    assert config_from_dict({"data": {"bad_images": "fail"}}).data.bad_images == "fail"
    with pytest.raises(ConfigError, match="data.bad_images: 'ignore' is not allowed; choose one of skip, fail"):
        config_from_dict({"data": {"bad_images": "ignore"}})


def _encoded(picture, fmt: str, **options) -> bytes:
    """An array or PIL image encoded as ``fmt``."""
    import io

    buffer = io.BytesIO()
    (picture if isinstance(picture, Image.Image) else Image.fromarray(picture)).save(buffer, fmt, **options)
    return buffer.getvalue()


def _catalogue_of_bad_files(root, rng) -> tuple[list[str], list[str]]:
    """Every kind of file that has an image suffix but no usable image, and readable oddities that must stay;
    returns (the unreadable ones, the readable oddities)."""
    import os

    picture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png, jpg = _encoded(picture, "PNG"), _encoded(picture, "JPEG", quality=90)
    flipped_png, flipped_jpg = bytearray(png), bytearray(jpg)
    flipped_png[len(png) // 2] ^= 0xFF
    flipped_jpg[len(jpg) // 2] ^= 0xFF
    bad = {"0/trunc_png_50.png": png[: len(png) // 2], "0/trunc_png_90.png": png[: int(len(png) * 0.9)],
           "1/png_header_only.png": png[:40], "1/trunc_jpg_50.jpg": jpg[: len(jpg) // 2],
           "2/trunc_jpg_97.jpg": jpg[: int(len(jpg) * 0.97)], "2/text.png": b"this is not an image\n",
           "3/html.jpg": b"<html><body>404 Not Found</body></html>", "3/zero.jpg": b"", "4/zero.png": b"",
           "4/random.jpeg": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
           "5/random.png": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
           "5/png_magic_only.png": b"\x89PNG\r\n\x1a\n",
           "6/trunc_webp.webp": _encoded(picture, "WEBP")[:200], "7/trunc_bmp.bmp": _encoded(picture, "BMP")[:5000],
           "8/flipped_png.png": bytes(flipped_png)}
    for name, content in bad.items():
        (root / name).write_bytes(content)
    os.symlink("/nonexistent/picture.png", root / "8" / "dangling_link.png")
    readable = {"9/jpeg_named_png.png": _encoded(picture, "JPEG"), "9/cmyk.jpg": _encoded(Image.fromarray(picture).convert("CMYK"), "JPEG"),
                "9/ok.webp": _encoded(picture, "WEBP"), "9/UPPER.PNG": png,
                "9/sixteen_bit.png": _encoded(rng.integers(0, 65535, (28, 28)).astype(np.uint16), "PNG"),
                "8/flipped_jpg.jpg": bytes(flipped_jpg)}  # decodes, to wrong pixels: no check can tell
    for name, content in readable.items():
        (root / name).write_bytes(content)
    for hidden in (".DS_Store", "3/.DS_Store", "3/._0000.png", "0/readme.txt"):
        (root / hidden).write_bytes(b"\0\0\0\1Bud1")
    return [*bad, "8/dangling_link.png"], list(readable)


@needs_mnist_10k
def test_a_real_image_folder_with_every_kind_of_bad_file(tmp_path, capsys):
    # Real MNIST digits in class folders (20 of digits 0-6, 5 of 7-9), plus the catalogue above.
    images, labels = read_idx(MNIST_10K_DIR / "train-images-idx3-ubyte.gz"), read_idx(
        MNIST_10K_DIR / "train-labels-idx1-ubyte.gz")
    for digit in range(10):
        (tmp_path / str(digit)).mkdir()
        for i in np.flatnonzero(labels == digit)[: 20 if digit < 7 else 5]:
            Image.fromarray(images[i]).save(tmp_path / str(digit) / f"{i:05d}.png")
    unreadable, readable = _catalogue_of_bad_files(tmp_path, np.random.default_rng(0))
    good = 7 * 20 + 3 * 5
    data = load_images(DataConfig(dataset="folder", root=str(tmp_path), image_size=32, channels=1, num_workers=0))
    assert len(data) == good + len(readable)
    err = capsys.readouterr().err.strip().splitlines()
    total = good + len(readable) + len(unreadable)
    assert len(err) == 1 and f"{len(unreadable)} unreadable image files of {total}" in err[0], err
    with pytest.raises(DdpmkitError) as stopped:
        load_images(DataConfig(dataset="folder", root=str(tmp_path), image_size=32, bad_images="fail"))
    message = str(stopped.value)
    assert "\n" not in message and "is not a readable image" in message
    assert f"{len(unreadable)} of {total}" in message
