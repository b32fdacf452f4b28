"""Why the exact float32 rows live in numpy arrays (2 MiB pages) and not in FAISS' IndexFlatIP storage (4 KiB pages).

    python benchmarks/bench_pages.py --n 100000 --repeats 20

Builds the same N x 18 x 512 float32 rows twice, 18 `faiss.IndexFlatIP` (added in batches of 4096, as the store
adds at start-up) and one layer-major numpy array, reports each one's AnonHugePages, then times the one-probe
scan kernel (`vectors._costs_one`: the C kernel, or FAISS' SIMD dot) over both, alternating A and B at every
repeat so that both see the same bandwidth regime (this host's moves between minutes). Two scan threads, as the
store uses on this machine. Random rows: the speed does not depend on what they mean.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.store.vectors import _costs_one


def anon_huge_mb() -> float:
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    n = args.n
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((4096, N_LAYERS, DIM), dtype=np.float32)

    huge0 = anon_huge_mb()
    t = time.perf_counter()
    flat = [faiss.IndexFlatIP(DIM) for _ in range(N_LAYERS)]
    for s in range(0, n, len(batch)):
        m = min(len(batch), n - s)
        for layer, index in enumerate(flat):
            index.add(np.ascontiguousarray(batch[:m, layer]))
    t_faiss = time.perf_counter() - t
    huge1 = anon_huge_mb()
    t = time.perf_counter()
    rows = np.empty((N_LAYERS, n, DIM), np.float32)  # numpy advises 2 MiB pages for large buffers
    for s in range(0, n, len(batch)):
        m = min(len(batch), n - s)
        rows[:, s : s + m] = batch[:m].transpose(1, 0, 2)
    t_numpy = time.perf_counter() - t
    huge2 = anon_huge_mb()
    print(f"N = {n:,}: adds in batches of 4096: IndexFlatIP {t_faiss:.2f} s (AnonHugePages +{huge1 - huge0:.0f} MB), "
          f"numpy array {t_numpy:.2f} s (+{huge2 - huge1:.0f} MB)")

    views = {"IndexFlatIP (4 KiB pages)": [faiss.rev_swig_ptr(ix.get_xb(), n * DIM).reshape(n, DIM) for ix in flat],
             "numpy (2 MiB pages)": [rows[layer] for layer in range(N_LAYERS)]}
    norms = [np.ones(n, np.float32)] * N_LAYERS
    q = rng.standard_normal((N_LAYERS, DIM), dtype=np.float32)
    out = np.empty(n, np.float32)
    pool = ThreadPoolExecutor(1)
    half = n // 2

    def scan(vs, layers):
        sub, qs, nm = [vs[l] for l in layers], np.ascontiguousarray(q[list(layers)]), norms[: len(layers)]
        other = pool.submit(_costs_one, out[half:], sub, qs, slice(half, n), nm, "l2")
        _costs_one(out[:half], sub, qs, slice(0, half), nm, "l2")
        other.result()

    print("| layers | storage | scan p50 ms | GB/s |\n|---|---|---|---|")
    for name, layers in (("all 18", range(N_LAYERS)), ("layer 1", range(1)), ("high:4", range(4))):
        times = {k: [] for k in views}
        for _ in range(2):  # warm-up
            for vs in views.values():
                scan(vs, layers)
        for _ in range(args.repeats):
            for k, vs in views.items():
                t = time.perf_counter()
                scan(vs, layers)
                times[k].append(time.perf_counter() - t)
        for k, ts in times.items():
            p50 = float(np.median(ts))
            print(f"| {name} | {k} | {p50 * 1e3:.2f} | {n * len(layers) * DIM * 4 / p50 / 1e9:.1f} |")


if __name__ == "__main__":
    main()
