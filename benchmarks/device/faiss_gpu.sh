#!/usr/bin/env bash
# FAISS GPU checks and benchmarks on a lent device machine (CUDA 13 image with PyTorch, no network), from the
# repo root:
#   bash benchmarks/device/faiss_gpu.sh [TOTAL_SECONDS]        # logs under $OUT (or ./gpu-out); default 540 s
# Carried in .whl/ (git-ignored; fetched on a networked machine with `pip download --no-deps --only-binary=:all:
# --python-version 3.12 ...`): nvidia-cuda-runtime-cu12, lmdb, cryptography, cffi, pycparser; faiss-gpu 1.15.1
# (135 MB) split into parts of at most 46 MiB, each carried by one call that copies it to /tmp/fk-parts (with
# its sha256 in /tmp/fk-parts/sha) while the machine stays warm. CUDA 12's cuBLAS is too large to carry:
# cublas12_shim.c stands in for it (benchmarks only).
# Steps: install the wheels, build the shim and the float16 scan extension, lay out the `facekeys` package as
# pyproject.toml's package-dir says, then the flat-backend tests on the GPU, bench_gpu_flat at 1M and
# bench_scale at 100k (flat-gpu backend).
set -uo pipefail
OUT=${OUT:-gpu-out}
LIMIT=${1:-540}  # the last step gets what is left of this
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"

SITE=/tmp/fk-site
rm -rf "$SITE"
# faiss-gpu (1.15.1: sm_90 code; faiss-gpu-cu12 1.14.1 has sm_70/80 only) is larger than one call may carry: it
# arrives in parts (earlier calls copied them to /tmp/fk-parts), joined and checked here
PARTS=(/tmp/fk-parts/faiss_gpu-*.whl.part-*)
if [ -e "${PARTS[0]}" ]; then
  WHEEL=$(basename "${PARTS[0]}" | sed 's/\.part-.*//')
  cat "${PARTS[@]}" > ".whl/$WHEEL"
  [ "$(sha256sum ".whl/$WHEEL" | cut -c1-64)" = "$(cat /tmp/fk-parts/sha)" ] || { echo "faiss wheel parts: sha256 mismatch"; exit 1; }
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 1
CUBLAS13=$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
CURAND10=$(find / -name 'libcurand.so.10' -not -path '/proc/*' 2>/dev/null | head -1)
echo "libcublas.so.13: ${CUBLAS13:-not found}; libcurand.so.10: ${CURAND10:-not found}" | tee -a "$OUT/gpu.txt"
# the CUDA 12 pip layout faiss-gpu preloads from: nvidia/cublas/lib (the shim), nvidia/curand/lib (the system's
# libcurand.so.10, the same soname in CUDA 12 and 13), nvidia/cuda_runtime/lib (the carried wheel)
SHIM="$SITE/nvidia/cublas/lib"
mkdir -p "$SHIM" "$SITE/nvidia/curand/lib"
touch "$SITE/nvidia/__init__.py"  # found before any other `nvidia` on sys.path
ln -sf "$CURAND10" "$SITE/nvidia/curand/lib/libcurand.so.10"
cc -shared -fPIC -O2 -Wl,-soname,libcublas.so.12 -Wl,--version-script=benchmarks/device/cublas12_shim.map \
   -o "$SHIM/libcublas.so.12" benchmarks/device/cublas12_shim.c -ldl || exit 1
echo 'int facekeys_cublaslt12_placeholder;' | cc -shared -fPIC -Wl,-soname,libcublasLt.so.12 -o "$SHIM/libcublasLt.so.12" -x c - || exit 1
export LD_LIBRARY_PATH="$SHIM:$SITE/nvidia/cuda_runtime/lib:$(dirname "${CUBLAS13:-/nonexistent/x}"):${LD_LIBRARY_PATH:-}"

source benchmarks/device/pkg_layout.sh
export PYTHONPATH="$FK:$SITE"
EXT=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
INC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
cc -O3 -std=c11 -shared -fPIC -I"$INC" server/facekeys/store/_f16dot.c -o "server/facekeys/store/_f16dot$EXT" -lm \
  2>&1 | tail -3 | tee -a "$OUT/gpu.txt" || true
python3 -c "
import faiss, facekeys.store.ann as a
from facekeys.store.flat import gpu_count
print('faiss', faiss.__version__, 'GPUs seen:', gpu_count(), 'float16 kernel:', a.F16_KERNEL)
" 2>&1 | tee -a "$OUT/gpu.txt"

[ -n "${ONLY_GPU_FLAT:-}" ] || timeout 150 python3 -m pytest -q -p no:cacheprovider tests/store/test_ann_flat.py tests/store/test_gpu_faiss.py \
  2>&1 | tee "$OUT/test_gpu.log" | tail -15
timeout $((LIMIT - SECONDS - 5)) python3 benchmarks/bench_gpu_flat.py --n 1000000 --timed 100 --out "$OUT/gpu_flat_1m.md" \
  2>&1 | tee "$OUT/gpu_flat_1m.log"
[ -n "${ONLY_GPU_FLAT:-}" ] || timeout $((LIMIT - SECONDS - 5)) python3 benchmarks/bench_scale.py --n 100000 --backend flat --threads 16 \
  --out "$OUT/scale_100k_flat_gpu.md" 2>&1 | tee "$OUT/scale_100k.log" | grep -v "added"
echo "done"
