#!/usr/bin/env bash
# The main job: install, train the 'quick' preset on Fashion-MNIST on the CPU, sample with the EMA weights and
# write runs/quick/samples/grid.png. Re-running resumes or reuses the finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ddpmkit train --preset quick --run-dir runs/quick
.venv/bin/ddpmkit sample --checkpoint runs/quick/final.pt --sampler ddpm --steps 100 --num-samples 64 \
    --output-dir runs/quick/samples
echo "open runs/quick/samples/grid.png"
