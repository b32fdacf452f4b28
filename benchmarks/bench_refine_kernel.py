"""The ann refine step's 4-bit PQ table sums (`_f16dot.pq4`) per C kernel this CPU runs.

    python benchmarks/bench_refine_kernel.py --n 1000000

The refine step scores each fast-scan candidate's refine codes (ann_refine_m = 128 sub-quantisers per layer, 4
bits each: 64 B per key and layer) over the subset's layers by table lookups, rows scattered over the store. This
times those sums on random codes of `--n` rows x 18 layers for the candidate counts of one 500k-row shard at 1M
keys (5,120 candidates for 4 and 6 layers, 15,360 for all 18), each kernel in turn on the same distinct random rows
(new rows every repeat, in no order, as the fast-scan ranking passes them), after warm-up, and checks that the
kernels' sums agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import machine_lines  # noqa: E402

from facekeys.dims import N_LAYERS  # noqa: E402

try:
    from facekeys.store import _f16dot
except ImportError:  # the optional C extension was not built
    _f16dot = None

CASES = ((4, 5120), (6, 5120), (18, 15360))  # (layers, candidate rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="rows of refine codes")
    ap.add_argument("--m", type=int, default=128, help="sub-quantisers per layer (ann_refine_m)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if _f16dot is None:
        sys.exit("facekeys.store._f16dot is not built: nothing to time (pip install -e . with a C compiler)")
    if args.m < 2 or args.m % 2 or 512 % args.m:
        sys.exit(f"--m must be an even divisor of 512, got {args.m}")
    if args.warmup < 0 or args.repeats < 1:
        sys.exit(f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup} and {args.repeats}")
    if args.n < max(c for _, c in CASES):
        sys.exit(f"--n must be at least {max(c for _, c in CASES)}")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.n, N_LAYERS * args.m // 2), dtype=np.uint8)  # (n, 18 * m/2)
    tables = rng.standard_normal((N_LAYERS, args.m, 16)).astype(np.float32)  # (18, m, 16)
    kernels = _f16dot.kernels()
    lines = ["## bench_refine_kernel", "", *machine_lines(args),
             f"- kernels this CPU runs: {', '.join(kernels)}; random codes of {args.n:,} rows x {N_LAYERS} layers, "
             f"m = {args.m} ({args.m // 2} B per row and layer); {args.warmup} warm-up + {args.repeats} timed calls per "
             "kernel and case, kernels in turn on the same rows", "",
             "| layers | rows | kernel | p50 ms | p90 ms | ns per row and layer | vs scalar | max rel. diff vs first |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for n_layers, c in CASES:
        layers = np.arange(n_layers, dtype=np.int64)
        lut = np.ascontiguousarray(tables[:n_layers])
        times = {k: [] for k in kernels}
        diff = {k: 0.0 for k in kernels}
        for r in range(args.warmup + args.repeats):
            rows = rng.choice(args.n, c, replace=False).astype(np.int64)
            first = None
            for k in kernels:
                out = np.empty(c, np.float32)
                t = time.perf_counter()
                _f16dot.pq4(out, codes, rows, layers, lut, kernel=k)
                dt = time.perf_counter() - t
                if r >= args.warmup:
                    times[k].append(dt)
                if first is None:
                    first = out
                diff[k] = max(diff[k], float(np.max(np.abs(out - first)) / np.max(np.abs(first))))
        scalar = np.median(times["scalar"])
        for k in kernels:
            p50 = np.median(times[k])
            lines.append(f"| {n_layers} | {c:,} | {k} | {p50 * 1e3:.2f} | {np.percentile(times[k], 90) * 1e3:.2f} "
                         f"| {p50 / c / n_layers * 1e9:.1f} | {scalar / p50:.2f}x | {diff[k]:.1e} |")
            print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
