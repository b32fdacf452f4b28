"""Encrypted start-up: building the key transform (18 QR factorisations of 512x512) with the default BLAS threads
vs bounded threads, in one run.

    python benchmarks/bench_startup.py --repeats 5

"default" is the build as it was (`security.transform._layer_matrix` per layer with whatever BLAS threads the
process has); "bounded" is `KeyTransform(secret)` as shipped (the same build inside `threadpool_limits(
BUILD_BLAS_THREADS)`, restored afterwards). One warm-up of each, then the two alternate at every repeat so that
both see the same load; the median and the range are reported, plus the largest difference between the matrices
the two builds give (the transform must not depend on the thread count) and the BLAS threads outside the build
(unchanged by it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info

from facekeys.dims import N_LAYERS
from facekeys.security import transform
from facekeys.security.transform import KeyTransform


def build_default(secret: bytes) -> np.ndarray:
    return np.stack([transform._layer_matrix(secret, l) for l in range(N_LAYERS)]).astype(np.float64)


def build_bounded(secret: bytes) -> np.ndarray:
    return KeyTransform(secret)._q


def blas() -> str:
    return ", ".join(f"{i['internal_api']} {i.get('version')} x{i['num_threads']}" for i in threadpool_info()
                     if i["user_api"] == "blas") or "none found"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    secret = b"bench-startup-secret-0123456789abcdef"
    np.linalg.qr(np.eye(8))  # loads BLAS, so threadpool_info sees it
    before = blas()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"{len(os.sched_getaffinity(0))} usable; BLAS: {before}; bounded = {transform.BUILD_BLAS_THREADS} thread(s)")
    q_default, q_bounded = build_default(secret), build_bounded(secret)  # warm-up
    times = {"default": [], "bounded": []}
    for _ in range(args.repeats):
        for name, fn in (("default", build_default), ("bounded", build_bounded)):
            t0 = time.perf_counter()
            fn(secret)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name:8s} median {statistics.median(ts):7.3f} s  (min {min(ts):.3f}, max {max(ts):.3f}, "
              f"{len(ts)} repeats)")
    print(f"speed-up (medians): {statistics.median(times['default']) / statistics.median(times['bounded']):.1f}x")
    print(f"largest |Q_default - Q_bounded|: {np.abs(q_default - q_bounded).max():.2e}")
    after = blas()
    print(f"BLAS threads after the builds: {after} ({'unchanged' if after == before else 'CHANGED'})")


if __name__ == "__main__":
    main()
