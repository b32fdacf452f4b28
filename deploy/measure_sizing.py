#!/usr/bin/env python3
"""Measure what one key costs: LMDB bytes on disk, index bytes in memory, and Match latency.

    python deploy/measure_sizing.py --keys 10000 [--batch 500] [--probes 20]

Enrols N synthetic (18, 512) float32 keys (with a small `where` record: camera, video, track, 8 boxes)
through the real engine into a temp directory and prints one JSON object. The numbers in
deploy/README.md ("Sizing") come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--layers", default="high:4")
    args = ap.parse_args()

    from facekeys.dims import DIM, N_LAYERS
    from facekeys.records import MatchQuery, NewKey, Where
    from facekeys.store import KeyStore, StoreConfig

    rng = np.random.default_rng(0)
    mean = rng.standard_normal((N_LAYERS, DIM)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lmdb"
        store = KeyStore.open(path, StoreConfig(map_size=8 << 30, durable=False))
        t0 = time.perf_counter()
        for start in range(0, args.keys, args.batch):
            n = min(args.batch, args.keys - start)
            lat = (mean + 0.7 * rng.standard_normal((n, N_LAYERS, DIM))).astype(np.float32)
            store.enroll([
                NewKey(lat[i], "psp-ffhq", identity_id=f"person-{(start + i) // 4:07d}",
                       where=Where("cam-017", f"video-{start // 1000:05d}", f"track-{start + i}",
                                   1.7e9 + start + i, 1.7e9 + start + i + 4.0,
                                   rng.integers(1, 720, (8, 5)).astype(np.int32)))
                for i in range(n)])
        enrol_s = time.perf_counter() - t0
        stats = store.stats()
        probe = (mean + 0.7 * rng.standard_normal((1, N_LAYERS, DIM))).astype(np.float32)
        times = []
        for _ in range(args.probes):
            t = time.perf_counter()
            store.match(MatchQuery.build(probe, "psp-ffhq", layers=args.layers, metric="cosine", top_k=5))
            times.append(time.perf_counter() - t)
        store.close()
        file_bytes = (path / "data.mdb").stat().st_blocks * 512  # allocated, not the sparse map size
    out = {
        "keys": args.keys,
        "lmdb_used_bytes": stats.lmdb_used_bytes,
        "lmdb_bytes_per_key": round(stats.lmdb_used_bytes / args.keys, 1),
        "data_mdb_allocated_bytes_per_key": round(file_bytes / args.keys, 1),
        "index_bytes": stats.index_bytes,
        "index_bytes_per_key": round(stats.index_bytes / args.keys, 1),
        "enrol_keys_per_s": round(args.keys / enrol_s, 1),
        "match_ms_median": round(1000 * statistics.median(times), 2),
        "match_layers": args.layers,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
