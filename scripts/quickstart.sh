#!/usr/bin/env bash
# The main job: install, train the class-conditional 'quick' preset (rectified flow) on Fashion-MNIST on the CPU, then
# with the EMA weights and the default sampler (SDE-DPM-Solver++) draw one labelled row per class
# (runs/quick/samples/grid.png) and a denoising GIF (runs/quick/gifs/all.gif, 24 steps: every state a frame).
# Re-running resumes or reuses the finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ddpmkit train --preset quick --run-dir runs/quick
.venv/bin/ddpmkit sample --checkpoint runs/quick/final.pt --class all --num-samples 8 --guidance 1 \
    --output-dir runs/quick/samples
.venv/bin/ddpmkit animate --checkpoint runs/quick/final.pt --class all --per-class 4 --guidance 1 \
    --steps 24 --frames 25 --output-dir runs/quick/gifs
echo "open runs/quick/samples/grid.png and runs/quick/gifs/all.gif"
