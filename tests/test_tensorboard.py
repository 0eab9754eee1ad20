"""What a run writes for TensorBoard, read back with TensorBoard's own reader: scalars (training, evaluation and
resource use), sample grids, and the HParams plugin's experiment, session and metrics; log.jsonl has the same."""
from __future__ import annotations

import json

import pytest

from ddpmkit.config import config_from_dict
from ddpmkit.tensorboard_hparams import flat_hparams
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


def test_hparams_hold_the_whole_config_and_the_status(run):
    cfg, _, events = run
    content = hparams_content(events)
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    assert start["train.lr"].number_value == cfg.train.lr
    assert start["model.channel_mults"].string_value == "1,2" and start["data.dataset"].string_value == "mnist"
    assert start["model.class_conditional"].string_value == "false"  # was the number 0.0: a range in the tab
    assert len(start) == sum(len(section) for section in cfg.to_dict().values())
    assert "_hparams_/experiment" not in content  # TensorBoard builds the columns from all runs (test below)
    end = content["_hparams_/session_end_info"].session_end_info
    assert api_pb2.Status.Name(end.status) == "STATUS_SUCCESS"


def test_log_jsonl_has_the_resource_numbers_too(run):
    _, run_dir, _ = run
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert logged and all({"cpu_percent", "ram_gib", "images_per_s"} <= set(r) for r in logged)


def hparams_tab(logdir) -> tuple[dict, dict]:
    """The HParams tab as TensorBoard's own plugin serves it for ``logdir``: the experiment (hyper-parameter and
    metric columns) and the session groups (one row per run, with its metric values)."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    context = base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                    data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)))
    plugin = hparams_plugin.HParamsPlugin(context)
    apps = plugin.get_plugin_apps()

    def post(route, body):
        response = Client(apps[route]).post(route, json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    experiment = post("/experiment", {"experimentName": ""})
    metric_names = [m["name"] for m in experiment.get("metricInfos", [])]
    groups = post("/session_groups", {"startIndex": 0, "sliceSize": 10, "allowedStatuses": ["STATUS_SUCCESS"],
                                      "colParams": [{"metric": name} for name in metric_names]})
    return experiment, groups


def test_hparams_tab_shows_the_metrics_of_every_run(tiny_idx_root, tmp_path):
    """Two runs with different metrics in one log folder (one without held-out loss): the HParams tab has a column
    for each run's metrics. Failed when every run wrote its own experiment summary, which TensorBoard takes from the
    run it happens to find first (here, on ext4, the run without held-out loss), so eval/heldout_loss_ema had no
    column. Whatever the order, the columns hold because no run writes an experiment summary (test above)."""
    for name, eval_every in (("a_heldout", 3), ("b_no_heldout", 0)):
        d = tiny_config_dict(tiny_idx_root)
        d["train"].update(eval_every=eval_every)
        train(config_from_dict(d), tmp_path / name, progress=False)
    experiment, groups = hparams_tab(tmp_path)
    columns = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"train/loss", "eval/heldout_loss_ema"} <= columns
    d = tiny_config_dict(tiny_idx_root)
    assert {h["name"] for h in experiment["hparamInfos"]} == set(flat_hparams(config_from_dict(d)))
    rows = {g["name"].split("/")[0]: g for g in groups["sessionGroups"]}
    assert set(rows) == {"a_heldout", "b_no_heldout"}
    for name, row in rows.items():
        values = {m["name"]["tag"]: m["value"] for m in row["metricValues"]}
        assert "train/loss" in values
        assert ("eval/heldout_loss_ema" in values) == (name == "a_heldout")
