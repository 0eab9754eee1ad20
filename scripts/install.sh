#!/usr/bin/env bash
# Install everything ddpmkit needs into ./.venv: PyTorch, the package (with test extras when asked), and, where
# apt-get exists and root or password-less sudo is available, Debian's dataset-fashion-mnist package (and, for the
# tests, chromium with chromium-driver).
# Usage: bash scripts/install.sh [test]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo -n"; fi
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
        echo "note: could not install the Debian package dataset-fashion-mnist; torchvision will download" \
             "Fashion-MNIST instead (needs internet)" >&2
    fi
fi

# The test suite drives the demo page in a real browser: Debian's chromium and its driver.
if [ "${1:-}" = "test" ] && ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo -n"; fi
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium \
            chromium-driver; } >/dev/null 2>&1; then
        echo "note: could not install chromium and chromium-driver; the browser test of the demo will be skipped" >&2
    fi
fi

# VENV_ARGS=--system-site-packages lets the venv use a PyTorch the system already has (the CUDA Docker image's);
# TORCH_INDEX_URL installs PyTorch from another index first (https://download.pytorch.org/whl/cpu: the CPU build).
python="${PYTHON:-python3}"
# shellcheck disable=SC2086  # VENV_ARGS holds options, split on purpose
[ -x .venv/bin/python ] || "$python" -m venv ${VENV_ARGS:-} .venv
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --index-url "$TORCH_INDEX_URL" torch torchvision
fi
# EXTRAS=demo,nvml,hub adds optional parts (pyproject.toml); "test" adds the test tools and the demo.
extras="${EXTRAS:-}"
[ "${1:-}" = "test" ] && extras="test,demo${extras:+,$extras}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".${extras:+[$extras]}"
