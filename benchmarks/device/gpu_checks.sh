#!/usr/bin/env bash
# GPU checks for a lent device machine (CUDA image with PyTorch, no network), run from the repo root:
#   bash benchmarks/device/gpu_checks.sh           # writes logs to $OUT (or ./gpu-out)
# The image has torch/numpy/pytest but not this package: lay out a `facekeys` tree as pyproject.toml's
# package-dir says (symlinks) and put it on PYTHONPATH. Runs the CUDA model tests, then the model benchmark.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
source benchmarks/device/pkg_layout.sh
export PYTHONPATH="$FK" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/models/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
python3 benchmarks/bench_models.py --device cuda --repeats 10 --repeats-large 10 --encoder-batches 1 8 32 --generator-batches 1 4 2>&1 | tee "$OUT/bench_models_cuda.log"
