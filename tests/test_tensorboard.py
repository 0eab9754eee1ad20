"""What a run writes for TensorBoard, read back with TensorBoard's own reader: scalars (training, evaluation and
resource use), sample grids, and the HParams plugin's experiment, session and metrics; log.jsonl has the same."""
from __future__ import annotations

import json

import pytest

from ddpmkit.config import config_from_dict
from ddpmkit.train import train

from conftest import tiny_config_dict

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")
api_pb2 = pytest.importorskip("tensorboard.plugins.hparams.api_pb2")


@pytest.fixture(scope="module")
def run(tiny_idx_root, tmp_path_factory):
    d = tiny_config_dict(tiny_idx_root)
    d["train"].update(sample_every=3)
    cfg = config_from_dict(d)
    run_dir = tmp_path_factory.mktemp("tb_run")
    train(cfg, run_dir, progress=False)
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
    events.Reload()
    return cfg, run_dir, events


def test_scalars_include_training_evaluation_and_resources(run):
    cfg, _, events = run
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "eval/heldout_loss_ema", "resources/cpu_percent",
            "resources/ram_gib"} <= scalars
    steps = [e.step for e in events.Scalars("resources/ram_gib")]
    assert steps == list(range(cfg.train.log_every, cfg.train.steps + 1, cfg.train.log_every))
    assert all(0.01 < e.value < 64 for e in events.Scalars("resources/ram_gib"))  # a real process's GiB
    assert all(e.value >= 0 for e in events.Scalars("resources/cpu_percent"))


def test_sample_grids_are_images(run):
    cfg, _, events = run
    grids = events.Images("samples/ema")
    assert [g.step for g in grids] == [3, 6] and grids[0].width > cfg.data.image_size


def hparams_content(events) -> dict[str, object]:
    """tag -> the HParams plugin's parsed summary (experiment, session start, session end)."""
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in events.PluginTagToContent("hparams").items()}


def test_hparams_hold_the_whole_config_and_name_the_metrics(run):
    cfg, _, events = run
    content = hparams_content(events)
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    assert start["train.lr"].number_value == cfg.train.lr
    assert start["model.channel_mults"].string_value == "1,2" and start["data.dataset"].string_value == "mnist"
    assert len(start) == sum(len(section) for section in cfg.to_dict().values())
    experiment = content["_hparams_/experiment"].experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics == {"train/loss", "eval/heldout_loss_ema"} and metrics <= set(events.Tags()["scalars"])
    end = content["_hparams_/session_end_info"].session_end_info
    assert api_pb2.Status.Name(end.status) == "STATUS_SUCCESS"


def test_log_jsonl_has_the_resource_numbers_too(run):
    _, run_dir, _ = run
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert logged and all({"cpu_percent", "ram_gib", "images_per_s"} <= set(r) for r in logged)
