"""A run in TensorBoard's HParams tab: the whole resolved config as its hyper-parameters, and the run's own scalars
(the last held-out loss, the last in-training FD, the training loss) as its metrics, so that runs can be sorted
and compared by them.

The HParams plugin reads three summaries from a run's event files: the experiment (which hyper-parameters and
metric tags exist), the session start (this run's values) and the session end (its status). A metric's value is
the last value of the scalar of that tag in the same run, so the metrics are tags training already writes; unlike
``SummaryWriter.add_hparams``, which writes a second run in a subfolder, nothing is duplicated.
"""
from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .config import Config

HParam = int | float | str | bool


def flat_hparams(cfg: Config) -> dict[str, HParam]:
    """``{"train.lr": 0.002, "model.channel_mults": "1,2,4", ...}``: every key of the config, lists as text."""
    flat: dict[str, HParam] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return flat


def start_session(writer: SummaryWriter, cfg: Config, metric_tags: list[str]) -> None:
    """Write the experiment and this run's hyper-parameters (at every start: a resumed run's new event file has
    them too)."""
    experiment, start, _ = hparams(flat_hparams(cfg), dict.fromkeys(metric_tags, 0.0))
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(start)


def end_session(writer: SummaryWriter) -> None:
    """Mark the run finished (the HParams tab shows its status as success)."""
    _, _, end = hparams({}, {})
    writer.file_writer.add_summary(end)
