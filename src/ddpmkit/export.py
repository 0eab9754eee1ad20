"""``ddpmkit export``: a model in diffusers' folder format (with a model card) or as one .safetensors file."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .errors import DdpmkitError
from .formats import LoadedModel, read_model
from .formats.diffusers_folder import write_diffusers_folder
from .formats.safetensors_file import write_safetensors
from .metrics.domain import file_sha256

EXPORT_FORMATS = ("diffusers", "safetensors")


def export(checkpoint: str | Path,              # a .pt file, run directory, .safetensors, diffusers folder or Hub id
           output: str | Path,                  # the folder (diffusers) or file (safetensors) to write
           format: str = "diffusers",           # one of EXPORT_FORMATS
           use_ema: bool = True,                # the EMA weights (what sampling uses), or the raw trained ones
           metrics: Sequence[str | Path] = (),  # evaluate's metrics.json files for the model card
           overwrite: bool = False) -> Path:
    """Write ``checkpoint``'s model as ``format``; returns what was written. For the diffusers format the model card
    quotes the given metrics.json reports, and any found beside the checkpoint that measured this very file."""
    if format not in EXPORT_FORMATS:
        raise DdpmkitError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    model = read_model(checkpoint)
    if format == "safetensors":
        return write_safetensors(model, output, use_ema, overwrite)
    if not use_ema and metrics:
        raise DdpmkitError("--metrics with --no-ema: evaluate measures a checkpoint's EMA weights, not the raw ones "
                           "exported; leave out one of the two")
    reports = measured_reports(model, metrics) if use_ema else []
    return write_diffusers_folder(model, output, use_ema, reports, overwrite)


def measured_reports(model: LoadedModel, given: Sequence[str | Path]) -> list[dict]:
    """The evaluate reports of ``model``'s own file: those ``given`` (which must be of it), else the metrics.json
    files under its run directory and ./evaluation whose checkpoint SHA-256 is the file's."""
    digest = file_sha256(model.file) if model.file is not None and model.file.is_file() else None
    reports = []
    for path in given:
        report = _read_report(Path(path))
        measured = report.get("samples", {}).get("checkpoint_sha256")
        if measured is None:
            raise DdpmkitError(f"{path} measured samples read from files (evaluate --samples), which cannot be tied "
                               f"to this model; give the metrics.json of 'ddpmkit evaluate --checkpoint'")
        if measured != digest:
            raise DdpmkitError(f"{path} measured another checkpoint (SHA-256 {measured[:12]}...), not "
                               f"{model.name}; give the metrics.json of an evaluation of this checkpoint")
        reports.append(report)
    if given or digest is None:
        return reports
    near = [*sorted(model.file.parent.glob("**/metrics.json")), Path("evaluation") / "metrics.json"]
    for path in dict.fromkeys(p.resolve() for p in near if p.is_file()):
        try:
            report = _read_report(path)
        except DdpmkitError:
            continue
        if report.get("samples", {}).get("checkpoint_sha256") == digest:
            reports.append(report)
    return reports


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DdpmkitError(f"{path} could not be read as an evaluate report ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise DdpmkitError(f"{path} is not a metrics.json written by 'ddpmkit evaluate'")
    return report
