"""Uncached latent reads from LMDB (the float32 re-score of a Match): one after another, by reader threads, or
placed in the data file and read ahead at once.

    python benchmarks/bench_lmdb_reads.py --n 200000 --workdir /tmp/lmdb-reads

Match re-scores up to k + 16 of the float16 index's best keys from the float32 latents in LMDB
(`LmdbTable.get_latents`). At 1M keys those values are 37 GB and do not fit in RAM beside the float16 files, so a
Match reads them from disk. This writes N keys through `LmdbTable.put`, then for each setting evicts the file
from the page cache (fsync + posix_fadvise DONTNEED, the table closed) and times `get_latents` of `--keys` random
keys (distinct in every fetch; `--layers` coarsest layers) `--repeats` times: the B-tree starts cold as well, its
upper pages warm up within the first fetches. Settings: `read_threads=1` (every value read after the previous
one), `READ_THREADS` threads once the first value was not cached, both with `prefetch=False`, and the default
(`prefetch=True`: the values placed from the B-tree pages, every uncached one asked of the kernel at once, the
selected layers read straight from the file), in turn so that drifts of the disk show. Then the same settings and
keys again, each run's keys read once untimed first (cached).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import gb, machine_lines  # noqa: E402

from facekeys.dims import KEY_SHAPE  # noqa: E402
from facekeys.records import NewKey, Where  # noqa: E402
from facekeys.store.lmdb_table import READ_THREADS, LmdbTable  # noqa: E402


def evict(path: Path) -> None:
    """Drop the (closed) LMDB files' pages from the page cache."""
    for f in path.glob("*.mdb"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=26, help="keys per fetch (a top-10 Match re-scores 10 + 16)")
    ap.add_argument("--layers", type=int, default=4, help="coarsest layers read (high:4)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--workdir", default="/tmp/facekeys-lmdb-reads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.n < args.keys * args.repeats * 6:
        sys.exit(f"--n must be at least keys x repeats x 6 = {args.keys * args.repeats * 6} (distinct keys per fetch)")
    root = Path(args.workdir) / "lmdb"
    shutil.rmtree(root, ignore_errors=True)
    map_size = int(args.n * 40_000 * 1.3) + (256 << 20)
    table = LmdbTable(root, map_size=map_size, durable=False)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((1000,) + KEY_SHAPE).astype(np.float32)  # (1000, 18, 512), reused
    t0 = time.perf_counter()
    for s in range(0, args.n, 1000):
        m = min(1000, args.n - s)
        table.put([NewKey(block[j], "bench", where=Where(f"cam{j % 16}")) for j in range(m)],
                  [f"id{s + j}" for j in range(m)])
    t_write = time.perf_counter() - t0
    table.close()
    size = sum(f.stat().st_size for f in root.glob("*.mdb"))
    lines = machine_lines(args) + [
        f"- {args.n:,} keys written through LmdbTable.put in {t_write:.0f} s; data file {gb(size)}",
        "", "| read | pages | fetch of keys x layers | p50 ms | p90 ms | max ms | major faults per fetch "
        "| values read ahead per fetch |", "|---|---|---|---|---|---|---|---|"]
    settings = [(1, False), (READ_THREADS, False), (1, True)] * 2  # (read_threads, prefetch)
    per_run = args.keys * args.repeats
    order = rng.permutation(args.n)[: per_run * len(settings)] + 1  # key ids are 1..n, each read once
    runs = [(threads, prefetch, cached) for cached in (False, True) for threads, prefetch in settings]
    for i, (threads, prefetch, cached) in enumerate(runs):
        if not cached:
            evict(root)
        table = LmdbTable(root, map_size=map_size, durable=False, read_threads=threads, prefetch=prefetch)
        ids = order[(i % len(settings)) * per_run : (i % len(settings) + 1) * per_run]
        if cached:  # the same fetches once untimed: their pages are then in the page cache
            for fetch in ids.reshape(args.repeats, -1):
                table.get_latents(sorted(int(k) for k in fetch), range(args.layers))
        ts, faults, advised0 = [], [], table.latents_advised
        for fetch in ids.reshape(args.repeats, -1):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
            t = time.perf_counter()
            got = table.get_latents(sorted(int(k) for k in fetch), range(args.layers))
            ts.append(time.perf_counter() - t)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_majflt - f0)
            if len(got) != len(fetch):
                sys.exit(f"expected {len(fetch)} latents, got {len(got)}")
        advised = table.latents_advised - advised0
        table.close()
        ts = np.array(ts) * 1e3
        how = "placed, read ahead at once" if prefetch else f"{threads} thread{'s' if threads > 1 else ''}"
        lines.append(f"| {how} | {'cached' if cached else 'evicted'} | {args.keys} x {args.layers} "
                     f"| {np.median(ts):.2f} | {np.percentile(ts, 90):.2f} | {ts.max():.2f} | {np.mean(faults):.1f} "
                     f"| {advised / args.repeats:.1f} |")
        print(lines[-1], flush=True)
    shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
