"""Training: the objective overfits, EMA and LR follow their formulas, checkpoints round-trip, resume is exact."""
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.build import noise_schedule, unet_spec
from ddpmkit.checkpoint import load_checkpoint, save_checkpoint
from ddpmkit.config import TrainConfig, config_from_dict
from ddpmkit.ema import EMA, decay_for_halflife
from ddpmkit.errors import DdpmkitError
from ddpmkit.losses import diffusion_loss
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.train import train
from ddpmkit.unet import UNet



def _with(cfg, **sections):
    """A copy of cfg with {section: {key: value}} replaced."""
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


def test_ema_follows_its_formula():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9, warmup=False)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.model.weight, 0.9 * start + 0.1 * net.weight)
    warm = EMA(net, decay=0.999, warmup=True)
    assert float(warm.current_weight()) == pytest.approx(1 - 1 / 10)  # 1 - decay, decay = (1 + 0) / (10 + 0)


def test_ema_half_life_in_images_halves_an_old_weight():
    # After half-life / batch steps towards a new value, the old value keeps half its share (EDM, appendix F.1),
    # whatever the batch size.
    for batch_size in (16, 128):
        net = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(net.weight)
        ema = EMA(net, decay=decay_for_halflife(4096, batch_size), warmup=False)
        with torch.no_grad():
            net.weight.fill_(1.0)
        for _ in range(4096 // batch_size):
            ema.update(net)
        assert float(ema.model.weight) == pytest.approx(0.5, rel=1e-5)


def test_ema_half_life_sets_the_training_decay(tiny_config, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sys.modules["ddpmkit.train_state"], "EMA",
                        lambda model, decay, warmup: seen.append(decay) or EMA(model, decay))
    train(_with(tiny_config, train={"ema_halflife_images": 800, "steps": 1}), tmp_path, progress=False)
    assert seen == [pytest.approx(0.5 ** (8 / 800))]  # batch 8


def test_tiny_model_overfits_one_batch(tiny_config):
    cfg = tiny_config
    torch.manual_seed(0)
    model = UNet(unet_spec(cfg, channels=1, num_classes=0))
    schedule = noise_schedule(cfg.diffusion)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    t, noise = torch.randint(0, 10, (8,)), torch.randn(8, 1, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = diffusion_loss(model, schedule, x0, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.3)  # the zero-initialised network predicts eps = 0
    assert losses[-1] < 0.05 * losses[0]


def test_checkpoint_round_trip(tiny_config, tmp_path):
    final = train(tiny_config, tmp_path / "run", progress=False)
    state = load_checkpoint(final)
    assert state["step"] == tiny_config.train.steps
    assert config_from_dict(state["config"]) == tiny_config
    assert state["class_names"] == [str(i) for i in range(10)]
    sampler = DiffusionSampler(final, device="cpu")
    for name, tensor in sampler.model.state_dict().items():
        assert torch.equal(tensor, state["ema"]["model"][name])
    for name in ("latest.pt", "best.pt", "final.pt", "config.json", "log.jsonl", "loss.png"):
        assert (tmp_path / "run" / name).is_file()
    assert list((tmp_path / "run" / "samples").glob("step_*.png"))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_checkpoint({"a": torch.ones(2)}, tmp_path / "c.pt")

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(DdpmkitError, match="disk full; .* still holds the previous checkpoint"):
        save_checkpoint({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resume_reaches_the_same_weights(tiny_config, tmp_path):
    # Dropout, flips, label dropout and gradient accumulation all draw random numbers: all must be restored.
    cfg = _with(tiny_config, model={"dropout": 0.2, "class_conditional": True}, data={"hflip": True},
                train={"grad_accum": 2, "steps": 6, "checkpoint_every": 100})
    straight = load_checkpoint(train(cfg, tmp_path / "a", progress=False))
    train(cfg, tmp_path / "b", stop_at=3, progress=False)
    assert load_checkpoint(tmp_path / "b" / "latest.pt")["step"] == 3
    resumed = load_checkpoint(train(cfg, tmp_path / "b", progress=False))
    for key in ("model",):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), name
    for name, tensor in straight["ema"]["model"].items():
        assert torch.equal(tensor, resumed["ema"]["model"][name]), name


def test_resume_refuses_a_changed_model(tiny_config, tmp_path):
    train(tiny_config, tmp_path, stop_at=2, progress=False)
    changed = _with(tiny_config, model={"base_channels": 16})
    with pytest.raises(DdpmkitError, match="model.base_channels: 8 -> 16"):
        train(changed, tmp_path, progress=False)
    with pytest.raises(DdpmkitError, match="already holds a run"):
        train(tiny_config, tmp_path, resume=False, progress=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tiny_config, tmp_path, precision):
    cfg = _with(tiny_config, train={"precision": precision, "eval_every": 0})
    state = load_checkpoint(train(cfg, tmp_path, progress=False))
    assert all(torch.isfinite(p).all() for p in state["model"].values())


def test_bce_on_x0_in_unit_range(tiny_config, tmp_path):
    cfg = _with(tiny_config, diffusion={"loss": "bce", "prediction": "x0"}, data={"zero_one": True})
    sampler = DiffusionSampler(train(cfg, tmp_path, progress=False), device="cpu")
    images = sampler.sample_ddim(3, steps=5, progress=False)
    assert images.min() >= 0 and images.max() <= 1


def test_heldout_comes_from_train_when_there_is_no_test_split(tiny_config, tmp_path):
    root = tmp_path / "train_only"
    root.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / name).write_bytes((Path(tiny_config.data.root) / name).read_bytes())
    cfg = _with(tiny_config, data={"root": str(root)})
    train(cfg, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert "held out of train" in log


def test_sampler_api_is_batch_independent(tiny_config, tmp_path):
    sampler = DiffusionSampler(train(tiny_config, tmp_path, progress=False), device="cpu")
    whole = sampler.sample_ancestral(6, seed=5, batch_size=6, progress=False)
    split = sampler.sample_ancestral(6, seed=5, batch_size=4, progress=False)
    assert torch.allclose(whole, split, atol=1e-6)
    assert whole.shape == (6, 1, 8, 8) and whole.min() >= 0 and whole.max() <= 1
    assert not torch.allclose(sampler.sample_ddim(2, steps=5, eta=1.0, progress=False),
                              sampler.sample_ddim(2, steps=5, eta=0.0, progress=False))
    assert math.isfinite(sampler.sample_deterministic(2, progress=False).sum().item())


def test_in_training_fd_is_logged_and_can_choose_best(tiny_config, tiny_idx_root, tmp_path, monkeypatch):
    import json

    monkeypatch.setattr("ddpmkit.metrics.domain.DEFAULT_CACHE", tmp_path / "statistics")  # not the user's cache
    from ddpmkit.config import DataConfig
    from ddpmkit.metrics.classifier import train_classifier

    judge = tmp_path / "judge.pt"
    torch.save(train_classifier(DataConfig(dataset="mnist", root=str(tiny_idx_root), image_size=8), epochs=1,
                                batch_size=16, progress=False), judge)
    cfg = _with(tiny_config, train={"fd_every": 3, "fd_samples": 10, "fd_steps": 2, "fd_classifier": str(judge),
                                    "best_by": "fd"})
    train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    fds = [r for r in records if "fd_mnist_classifier" in r]
    assert [r["step"] for r in fds] == [3, 6]
    assert all(r["fd_sampler"] == "sde-dpm++2m" and r["fd_samples"] == 10 and r["fd_steps"] == 2 for r in fds)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best"] == pytest.approx(min(r["fd_mnist_classifier"] for r in fds))


def test_fd_options_are_validated(tiny_config):
    with pytest.raises(Exception, match="train.best_by=fd needs the in-training FD"):
        config_from_dict({"train": {"best_by": "fd"}})
    with pytest.raises(Exception, match="shipped for mnist and fashion_mnist, not cifar10"):
        config_from_dict({"data": {"dataset": "cifar10"}, "train": {"fd_every": 10}})


def test_the_loop_reads_nothing_back_between_log_steps(tiny_config, tmp_path, monkeypatch):
    # Reading a value off a GPU makes the host wait for all queued work, so the loop may read only at log steps
    # (the mean loss, the gradient norm and the count of skipped non-finite steps) and checkpoints. Count ddpmkit's
    # own Python-level read-backs in runs of 4 and 10 steps that log every 2 steps: the six extra steps may add only
    # the reads of their three extra log records. (Reads inside PyTorch are not counted; the fused AdamW that
    # train() uses keeps its step counters on the device.)
    import ddpmkit
    package = str(Path(ddpmkit.__file__).parent)
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                reads.append(name)
            return original(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def count(steps: int) -> int:
        reads.clear()
        cfg = _with(tiny_config, train={"steps": steps, "log_every": 2, "checkpoint_every": 1000, "eval_every": 0})
        train(cfg, tmp_path / f"run{steps}", progress=False)
        return len(reads)

    per_record = 3  # loss_sum.item(), float(grad_norm) and the non-finite guard's counts
    assert count(10) - count(4) == 3 * per_record
