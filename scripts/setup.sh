#!/usr/bin/env bash
# Create ./.venv and install NeuronAtlas with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned to the release this project is tested with (a local wheel on our machines).
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
echo "NeuronAtlas installed in $(pwd)/.venv"
