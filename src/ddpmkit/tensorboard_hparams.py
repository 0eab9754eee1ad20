"""A run in TensorBoard's HParams tab: the whole resolved config as its hyper-parameters, and the run's own scalars
(held-out loss, in-training FD, training loss, resource use: the last value of each) as its metrics, so that runs
can be sorted and compared by them.

The HParams plugin reads up to three summaries from a run's event files: the experiment (which hyper-parameter and
metric columns exist), the session start (this run's values) and the session end (its status). Only the last two are
written: the plugin takes the experiment of whichever run it finds first, so runs with different metrics (one without
held-out loss, one with FD) would lose columns; with no experiment summary anywhere it builds the columns from every
run's session start and scalar tags. Unlike ``SummaryWriter.add_hparams``, which writes a second run in a subfolder,
nothing is duplicated.
"""
from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .config import Config

HParam = int | float | str | bool


def flat_hparams(cfg: Config) -> dict[str, HParam]:
    """``{"train.lr": 0.002, "model.channel_mults": "1,2,4", "train.compile": "false", ...}``: every key of the
    config; lists and booleans as text (torch's ``hparams`` would store a boolean as the number 0 or 1, which the
    HParams tab then filters as a range instead of two choices)."""
    flat: dict[str, HParam] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                value = ",".join(map(str, value))
            flat[f"{section}.{key}"] = value
    return flat


def start_session(writer: SummaryWriter, cfg: Config) -> None:
    """Write this run's hyper-parameters (at every start: a resumed run's new event file has them too)."""
    _, start, _ = hparams(flat_hparams(cfg), {})
    writer.file_writer.add_summary(start)


def end_session(writer: SummaryWriter) -> None:
    """Mark the run finished (the HParams tab shows its status as success)."""
    _, _, end = hparams({}, {})
    writer.file_writer.add_summary(end)
