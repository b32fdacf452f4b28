"""Cosine candidates of the flat backend: recall of the linearised score against TAU (store/flat.py).

    python benchmarks/bench_flat_tau.py --n 50000

For each TAU, the candidate score is <q_S, x_S> - lam ||x_S||^2 with lam = TAU ||q_S|| / (2 r_S) (TAU 0 = inner
product alone); reports, per layer subset and candidate count, how often the exact cosine top-1 is among the
candidates and the mean share of the exact top-10 among them. Float32, exact, in numpy over SYNTHETIC pSp-like
keys (bench_scale's workload: 150 genuine probes, 100 impostors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import Workload  # noqa: E402

from facekeys.layers import parse_layers  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9, 1.0])
    ap.add_argument("--candidates", type=int, nargs="+", default=[64, 256])
    args = ap.parse_args()
    wl = Workload(args.n, 150, 100)
    xs = np.concatenate([x for _, x in wl.chunks()])  # (n, 18, 512)
    print(f"| layers | TAU | candidates | top-1 found | top-10 share |\n|---|---|---|---|---|")
    for subset in ("high:4", "high:9", "all"):
        lay = list(parse_layers(subset))
        x = xs[:, lay].reshape(args.n, -1)
        q = wl.probes[:, lay].reshape(len(wl.probes), -1).astype(np.float32)
        ip = q @ x.T  # (P, n)
        nx2 = np.einsum("nd,nd->n", x, x)
        top10 = np.argsort(-(ip / np.sqrt(nx2)[None]), 1)[:, :10]
        r_s = np.sqrt(nx2.mean())
        qn = np.linalg.norm(q, axis=1)[:, None]
        for tau in args.taus:
            score = ip - tau * qn / (2 * r_s) * nx2[None]
            for c in args.candidates:
                cand = np.argpartition(-score, c, 1)[:, :c]
                r1 = np.mean([top10[i, 0] in set(cand[i]) for i in range(len(q))])
                r10 = np.mean([len(set(top10[i]) & set(cand[i])) / 10 for i in range(len(q))])
                print(f"| {subset} | {tau} | {c} | {r1:.3f} | {r10:.3f} |", flush=True)


if __name__ == "__main__":
    main()
