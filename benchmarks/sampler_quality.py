"""Sample quality against network evaluations for every sampler on one checkpoint.

Run by hand (not a test), e.g.:

    python benchmarks/sampler_quality.py --checkpoint runs/quick --json docs/samplers_quick.json

For each sampler and budget of network evaluations (NFE) it draws ``--samples`` images through ``ddpmkit.evaluate``
(image i with seed i; a conditional model draws equal numbers of every class, class after class) and measures the
domain FD (on the judge classifier's features against the test split), the classifier IS, the accuracy
(conditional models) and the sampling wall time. Heun's S noise levels cost 2S - 1 evaluations, so its rows use the
largest S within the budget. Also measured: DDPM at 1,000 steps (the reference), the old leading spacing (which
starts at t = T - T/S) against the default trailing one, and guidance w = 3 with and without dynamic thresholding
and guidance rescale (conditional models; DPM-Solver++(2M) and its SDE variant at --guided-nfe, DDPM at 100 steps).

Rows run in the order the targets need them (up to 50 evaluations, then the DDPM-100 and DDPM-1000 references, then
the rest); each is written to the JSON as soon as it is measured, and rows already there are skipped: an interrupted run continues where it stopped. ``--table`` prints the
markdown table of a JSON file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from ddpmkit.data import load_images
from ddpmkit.evaluate import evaluate
from ddpmkit.files import write_json
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.viz import write_npz

NFE_DEFAULT = "5,10,20,50,100"
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "sde-dpm++2m", "heun", "unipc")


def steps_for(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def nfe_of(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def plan(nfes: list[int], conditional: bool, guided_nfe: int) -> list[dict]:
    rows = [{"sampler": s, "steps": steps_for(s, n)} for s in SAMPLERS for n in nfes]
    rows.append({"sampler": "ddpm", "steps": 1000})
    rows += [{"sampler": s, "steps": steps_for(s, n), "spacing": "leading"} for s in ("ddim", "dpm++2m")
             for n in (10, 20)]
    if conditional:
        for sampler in ("dpm++2m", "sde-dpm++2m", "ddpm"):
            steps = steps_for(sampler, guided_nfe) if sampler != "ddpm" else 100
            rows += [{"sampler": sampler, "steps": steps, "guidance": 3.0},
                     {"sampler": sampler, "steps": steps, "guidance": 3.0, "threshold": 0.995},
                     {"sampler": sampler, "steps": steps, "guidance": 3.0, "threshold": 0.995,
                      "guidance_rescale": 0.7}]
    return sorted(rows, key=priority)


def priority(row: dict) -> tuple[int, int]:
    """What the targets need first: everything up to 50 evaluations, then DDPM-100 and DDPM-1000 (the references),
    then the rest, cheapest first (guided rows cost two evaluations per step)."""
    nfe, guided = nfe_of(row["sampler"], row["steps"]), bool(row.get("guidance"))
    if nfe <= 50 and not (guided and row["sampler"] == "ddpm"):
        return 0, nfe
    if row["sampler"] == "ddpm" and not guided:
        return 1, nfe
    return 2, nfe * (2 if guided else 1)


def key(row: dict) -> str:
    return json.dumps({k: row[k] for k in sorted(row) if k in ("sampler", "steps", "spacing", "guidance",
                                                                 "threshold", "guidance_rescale")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a .pt file or a run directory (needed unless --table)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--nfe", default=NFE_DEFAULT, help=f"budgets of network evaluations (default {NFE_DEFAULT})")
    p.add_argument("--guided-nfe", type=int, default=20, help="the solver budget of the guidance rows (default 20)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-root", default="")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="real split to compare with (train for a data set without a test split, e.g. MNIST-10k)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", required=True, help="results, written row by row; an existing file is continued")
    p.add_argument("--table", action="store_true", help="only print the table of the rows in --json")
    a = p.parse_args()
    if a.table:
        done = json.loads(Path(a.json).read_text())
        print(table(done["rows"], done.get("real_floor")))
        return
    if not a.checkpoint:
        p.error("--checkpoint is required to measure")

    out = Path(a.json)
    done = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    measured = {key(r): r for r in done["rows"]}
    model = DiffusionSampler(a.checkpoint, device=a.device)
    rows = plan([int(n) for n in a.nfe.split(",")], model.is_conditional, a.guided_nfe)
    done.update(checkpoint=str(a.checkpoint), step=model.step, samples=a.samples, split=a.split,
                machine={"platform": platform.platform(), "torch": torch.__version__, "device": str(model.device),
                         "threads": torch.get_num_threads()})
    if "real_floor" not in done:
        done["real_floor"] = real_floor(model, a.samples, a.data_root, a.split)
        write_json(out, done)
    for row in rows:
        if key(row) in measured:
            continue
        report = evaluate(a.checkpoint, num_samples=a.samples, metrics=("fd", "is", "accuracy"),
                          batch_size=a.batch_size, data_root=a.data_root, split=a.split, device=a.device,
                          progress=False,
                          **{"guidance": 0.0, **row})
        result = {**row, "nfe": nfe_of(row["sampler"], row["steps"]), **report["metrics"],
                  "seconds": report["seconds"]["sampling"], "date": datetime.date.today().isoformat()}
        measured[key(row)] = result
        done["rows"] = list(measured.values())
        write_json(out, done)
        print(json.dumps(result))
    print(table(done["rows"], done.get("real_floor")))


def real_floor(model: DiffusionSampler, samples: int, data_root: str, split: str) -> dict:
    """The same metrics for ``samples`` real training images picked at random (seed 0) and measured as samples are:
    what a perfect sampler would score with this many images (for the train split, the floor of a set that the
    real side contains)."""
    data_root = data_root or model.config.data.root
    data = load_images(replace(model.config.data, root=data_root), "train")
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:samples]
    labels = data.labels[pick].tolist() if data.labels is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        path = write_npz(data.images[pick].float() / 255, Path(tmp) / "real.npz", pick.tolist(), labels)
        report = evaluate(samples=path, dataset=model.config.data.dataset, split=split,
                          data_root=data_root, metrics=("fd", "is", "accuracy"),
                          progress=False)
    return {"images": samples, "of": "the train split, seed 0", **report["metrics"]}


def table(rows: list[dict], floor: dict | None = None) -> str:
    fd = next((k for k in rows[0] if k.startswith("fd_")), "fd") if rows else "fd"
    lines = ["| sampler | spacing | guidance | NFE | FD | IS | accuracy | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.get("guidance", 0), r["sampler"], r.get("spacing", ""), r["nfe"])):
        guidance = f"w={r.get('guidance', 0):g}" + (f", threshold {r['threshold']}" if r.get("threshold") else "") + \
            (f", rescale {r['guidance_rescale']}" if r.get("guidance_rescale") else "")
        accuracy = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        lines.append(f"| {r['sampler']} | {r.get('spacing') or 'trailing'} | {guidance} | {r['nfe']} | "
                     f"{r.get(fd, float('nan')):.2f} | {r.get('classifier_is', float('nan')):.2f} | {accuracy} | "
                     f"{r['seconds']:.0f}{'*' if r.get('shared_cpu') else ''} |")
    if floor:
        lines.append(f"| {floor['images']} real training images | - | - | - | {floor.get(fd, float('nan')):.2f} | "
                     f"{floor.get('classifier_is', float('nan')):.2f} | {floor.get('accuracy', float('nan')):.3f} | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
