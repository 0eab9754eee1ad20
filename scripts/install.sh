#!/usr/bin/env bash
# Install everything ddpmkit needs into ./.venv: PyTorch, the package (with test extras when asked), and, where
# apt-get exists and root or password-less sudo is available, Debian's dataset-fashion-mnist package.
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

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".${extras}"
