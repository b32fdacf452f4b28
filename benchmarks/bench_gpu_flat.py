"""GPU side of the flat ann backend at scale (issue 6): build and search one `FlatCandidates` on the GPU.

    python benchmarks/bench_gpu_flat.py --n 1000000 --out gpu-flat.md      # on a machine whose FAISS sees a GPU

What a Match costs on the card at N keys: the candidate search of the flat float16 index of all 18 layers +
norm columns (store/flat.py) for one probe and for batches, per layer subset and metric, with k = the default
candidates and the GPU's k limit; plus the add rate (float16 -> float32 rows, norm columns, upload) that a
start-up from snapshot pays to rebuild the index. The exact re-rank of the candidates on the CPU is the same
work at any N (measured by bench_scale.py). Vectors: random rows of a synthetic block (a fresh random
row permutation and per-layer sign flip per 8,192-row chunk), SYNTHETIC: latency does not depend on the values.
Subsets of few layers therefore hold exact duplicates: the last column (probe's source row first) is a sanity
check for 9 and 18 layers only.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.layers import parse_layers
from facekeys.store.flat import BUILD_ROWS, D_FLAT, GPU_MAX_K, FlatCandidates, flat_probe, gpu_count, norm_columns

SUBSETS = ("high:1", "high:4", "high:6", "high:9", "all")


def gpu_memory_used_mib() -> str:
    if not shutil.which("nvidia-smi"):
        return "?"
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.strip()
    return out or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--timed", type=int, default=200, help="single-probe searches per case (after 10 warm-up)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, nargs="+", default=[256, GPU_MAX_K], help="candidates per search")
    ap.add_argument("--out", help="write the Markdown here")
    ap.add_argument("--cpu", action="store_true", help="FAISS' CPU float16 flat index instead (a smoke test)")
    args = ap.parse_args()
    if gpu_count() == 0 and not args.cpu:
        sys.exit("bench_gpu_flat: the installed FAISS sees no GPU (--cpu runs the CPU flat index)")
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else "?"
    lines = [f"## bench_gpu_flat N = {args.n:,}", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; GPU: {gpu}; faiss {faiss.__version__}",
             f"- command: `python benchmarks/bench_gpu_flat.py {' '.join(sys.argv[1:])}`",
             f"- GPU memory used before: {gpu_memory_used_mib()} MiB"]
    print("\n".join(lines), flush=True)
    rng = np.random.default_rng(0)
    block16 = (rng.standard_normal((BUILD_ROWS, N_LAYERS, DIM), np.float32) * 0.5).astype(np.float16)  # (B, 18, 512)
    block = block16.astype(np.float32).reshape(BUILD_ROWS, N_LAYERS * DIM)  # exact float16 values
    block_norm2 = np.einsum("nld,nld->nl", block16.astype(np.float32), block16.astype(np.float32))  # (B, 18)
    flat = FlatCandidates(on_gpu=not args.cpu)
    x = np.empty((BUILD_ROWS, D_FLAT), np.float32)
    keep = []  # a few stored rows, to make probes from
    t0 = time.perf_counter()
    for s in range(0, args.n, BUILD_ROWS):
        m = min(BUILD_ROWS, args.n - s)
        perm = rng.permutation(BUILD_ROWS)[:m]
        signs = np.repeat(np.where(rng.random(N_LAYERS) < 0.5, -1, 1).astype(np.float32), DIM)  # (9216,)
        np.multiply(block[perm], signs, out=x[:m, : N_LAYERS * DIM])  # sign flips keep float16 values and norms
        x[:m, N_LAYERS * DIM :] = norm_columns(block_norm2[perm])
        flat.add(x[:m])
        if len(keep) < 16:
            keep.append(x[:4, : N_LAYERS * DIM].reshape(4, N_LAYERS, DIM).copy())
    t_add = time.perf_counter() - t0
    lines.append(f"- add {args.n:,} rows: {t_add:.1f} s ({args.n / t_add:,.0f} rows/s, host float16 -> float32 "
                 f"+ norm columns + upload); on the card {flat.nbytes / 1e9:.2f} GB ({D_FLAT * 2:,} B/key); "
                 f"GPU memory used after: {gpu_memory_used_mib()} MiB")
    print(lines[-1], flush=True)
    stored = np.concatenate(keep)  # (P, 18, 512)
    probes = stored + 0.2 * rng.standard_normal(stored.shape).astype(np.float32)
    mean_norm2 = np.einsum("nld,nld->l", stored, stored) / len(stored)
    lines += ["", "| layers | metric | k | p50 / p99 ms (1 probe) | ms/probe (batch "
              f"{args.batch}) | top-1 is the probe's source row |", "|---|---|---|---|---|---|"]
    for subset in SUBSETS:
        lay = list(parse_layers(subset))
        for metric in ("cosine", "l2"):
            qf = flat_probe(np.ascontiguousarray(probes[:, lay]), lay, metric, mean_norm2)  # (P, D_FLAT)
            for k in args.k:
                for i in range(10):
                    flat.search(qf[i % len(qf) : i % len(qf) + 1], k)
                t = []
                for i in range(args.timed):
                    j = i % len(qf)
                    a = time.perf_counter()
                    flat.search(qf[j : j + 1], k)
                    t.append(time.perf_counter() - a)
                b = min(args.batch, len(qf))
                tb = []
                for _ in range(5):
                    a = time.perf_counter()
                    labels = flat.search(qf[:b], k)
                    tb.append(time.perf_counter() - a)
                # the probes' source rows are the first 4 rows of each of the first 16 chunks: labels 8192 c + j
                src = np.array([BUILD_ROWS * (i // 4) + i % 4 for i in range(b)])
                hit = np.mean(labels[:, 0] == src)
                lines.append(f"| {subset} | {metric} | {k} | {np.median(t) * 1e3:.2f} / "
                             f"{np.percentile(t, 99) * 1e3:.2f} "
                             f"| {np.median(tb) / b * 1e3:.3f} | {hit:.2f} |")
                print(lines[-1], flush=True)
    flat.release()
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
