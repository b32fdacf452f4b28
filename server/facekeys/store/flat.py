"""Flat float16 candidate indexes: the `ann` candidate generator on a GPU (StoreConfig.ann_backend).

One FAISS flat inner-product index per segment holds, per key, the stored float16 values of all 18 layers
followed by three float16 columns per layer carrying the layer's squared norm (times NORM_SCALE, split into
hi/mid/lo parts whose sum keeps float32 precision):

    x' = [x_1 .. x_18 | n_1 (3 parts) .. n_18 (3 parts)]          # (D_FLAT,) = 18*512 + 18*3 = 9,270

A probe over the layer subset S is one vector of the same width, zero outside S:

    l2:      [2 q_S | -1/NORM_SCALE on S]   -> 2<q_S, x_S> - ||x_S||^2 = ||q_S||^2 - ||q_S - x_S||^2
    cosine:  [q_S | -lam/NORM_SCALE on S]   -> <q_S, x_S> - lam ||x_S||^2,  lam = TAU ||q_S|| / (2 r_S)

so the l2 candidates come in the metric's exact order (up to the probe's rounding to float16 on the GPU).
Cosine, <q_S, x_S> / ||x_S||, is not linear in x; at cosine c and key norm r it is c ||q_S|| r, and the
linear score above has the same slope in r at r = r_S (the root-mean-square key norm over S, kept by the
index) when lam = c ||q_S|| / (2 r_S): keys are ranked by cosine with a penalty for norms far from typical.
TAU stands for c. Measured on the synthetic pSp-like workload (`benchmarks/bench_flat_tau.py`: 50k keys, 250
probes; RESULTS.md section 2): the exact cosine top-1 is among the best 64 candidates for 0.69-0.77 of probes
with inner products alone (TAU 0), 0.98-0.99 at TAU 0.5, all at TAU 0.8-1.0 (top-10 all at 0.8 and 0.9).
The exact float64 re-rank in `ann` then scores the candidates: returned scores never come from here.

On a GPU (FAISS GPU build, `gpu_count() > 0`): `faiss.GpuIndexFlatIP` with float16 storage, D_FLAT * 2 =
18,540 bytes per key on the card (about 4M keys on an 80 GB card). Without one: `faiss.IndexScalarQuantizer`
QT_fp16, the same bytes in RAM and the same candidates (slow: a reference for tests and small stores).
Nothing is trained: every segment is exact over its rows. A search that needs more candidates than the GPU
returns (GPU_MAX_K; a selective filter's over-fetch) scans the admitted rows exactly instead (ann._flat_pools).

FAISS GPU indexes and their resources are not thread-safe: every call on them takes `_GPU_LOCK` (the card
serialises the work anyway). No CUDA is touched at import; `gpu_count()` asks FAISS once, lazily.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import faiss
import numpy as np

from facekeys.dims import DIM, N_LAYERS

NORM_PARTS = 3  # float16 columns per layer norm: hi, mid, lo
NORM_SCALE = 2.0**-8  # norm columns hold ||x_l||^2 * 2**-8: norms up to 65504 * 2**8 (|x_l| <= ~4096) fit float16
D_FLAT = N_LAYERS * DIM + N_LAYERS * NORM_PARTS  # 9,270 columns per key
F16_MAX = float(np.finfo(np.float16).max)  # 65504
TAU = 0.9  # cosine candidates: the typical top cosine the linearisation is made at (see above)
GPU_MAX_K = 2048  # FAISS GPU k-selection limit
BUILD_ROWS = 8192  # rows converted to float32 and added at once (8192 * 9270 * 4 B = 304 MB)

_GPU_LOCK = threading.Lock()
_gpu_count: Optional[int] = None
_resources = None


def gpu_count() -> int:
    """GPUs the installed FAISS build can use (0 with faiss-cpu or no device)."""
    global _gpu_count
    if _gpu_count is None:
        _gpu_count = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    return _gpu_count


def gpu_resources():
    """The process' FAISS GPU resources (one stream, one cuBLAS handle; use under `_GPU_LOCK`)."""
    global _resources
    if _resources is None:
        _resources = faiss.StandardGpuResources()
    return _resources


def norm_columns(norm2: np.ndarray) -> np.ndarray:
    """(m, 18) float32 squared layer norms -> (m, 18 * 3) float32 values that float16 holds exactly and whose
    per-layer sum is norm2 * NORM_SCALE (to ~2**-33 relative, or float16's subnormal step 2**-25 absolute);
    clamped at float16's largest value."""
    v = np.minimum(np.asarray(norm2, np.float64) * NORM_SCALE, F16_MAX)
    parts = []
    for _ in range(NORM_PARTS):
        p = v.astype(np.float16).astype(np.float64)
        parts.append(p)
        v = v - p
    return np.stack(parts, axis=2).reshape(len(norm2), N_LAYERS * NORM_PARTS).astype(np.float32)


def flat_probe(q_all: np.ndarray, layers: list[int], metric: str, mean_norm2: np.ndarray) -> np.ndarray:
    """(Q, |S|, 512) float32 probes over `layers` (0-based) -> (Q, D_FLAT) float32 flat-index probes.
    mean_norm2: (18,) mean squared layer norm of the stored keys (cosine's r_S)."""
    out = np.zeros((len(q_all), D_FLAT), np.float32)
    if metric == "l2":
        w, lam = 2.0, np.ones(len(q_all))
    else:
        r_s = math.sqrt(max(float(np.sum(np.asarray(mean_norm2, np.float64)[list(layers)])), 1e-30))
        w, lam = 1.0, TAU * np.linalg.norm(q_all.reshape(len(q_all), -1).astype(np.float64), axis=1) / (2 * r_s)
    for j, layer in enumerate(layers):
        out[:, layer * DIM : (layer + 1) * DIM] = w * q_all[:, j, :]
        c = N_LAYERS * DIM + layer * NORM_PARTS
        out[:, c : c + NORM_PARTS] = (-lam / NORM_SCALE)[:, None]
    return out


class FlatCandidates:
    """One segment's flat index: rows added in order (FAISS label i = the i-th row added)."""

    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu
        if on_gpu:
            cfg = faiss.GpuIndexFlatConfig()
            cfg.useFloat16 = True  # float16 storage (the stored values are float16: nothing is lost)
            cfg.device = 0
            with _GPU_LOCK:
                self.index = faiss.GpuIndexFlatIP(gpu_resources(), D_FLAT, cfg)
        else:
            self.index = faiss.IndexScalarQuantizer(D_FLAT, faiss.ScalarQuantizer.QT_fp16,
                                                    faiss.METRIC_INNER_PRODUCT)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def max_k(self) -> int:
        return GPU_MAX_K if self.on_gpu else self.ntotal

    @property
    def nbytes(self) -> int:
        """Bytes of the stored columns (on the card when on_gpu)."""
        return self.ntotal * D_FLAT * 2

    def add(self, x: np.ndarray) -> None:
        """x: (m, D_FLAT) float32 (values exactly representable in float16)."""
        if self.on_gpu:
            with _GPU_LOCK:
                self.index.add(x)
        else:
            self.index.add(x)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        """(Q, D_FLAT) probes -> (Q, k) labels, best inner product first (-1 pads)."""
        k = max(1, min(k, self.max_k, self.ntotal))
        if self.on_gpu:
            with _GPU_LOCK:
                return self.index.search(q, k)[1]
        return self.index.search(q, k)[1]

    def release(self) -> None:
        """Free the index now (GPU memory is not left to the garbage collector's timing)."""
        if self.on_gpu:
            with _GPU_LOCK:
                self.index.reset()
        else:
            self.index.reset()
