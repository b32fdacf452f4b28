"""Scale benchmark (issue 6): the `ann` and float16 `exact` modes at 100k-1M keys on one box.

    python benchmarks/bench_scale.py --n 100000 --keystore --out benchmarks/RESULTS.md
    python benchmarks/bench_scale.py --n 1000000 --append benchmarks/RESULTS.md
    python benchmarks/bench_scale.py --n 100000 --backend flat --threads 16   # GPU box (faiss-gpu): flat-gpu

SYNTHETIC pSp-like latents: the model of benchmarks/facekeys/bench/synthetic.py (shared latent_avg,
per-layer identity profile, anisotropic noise, shared nuisance directions), streamed in chunks so that 1M
keys never sit in RAM as float32 (37 GB). Gallery: one key per identity. Probes: fresh (noisier) draws of
the first identities (genuine), and identities that are not in the gallery (impostors).

Measured, per N: build (add + background train/merge done synchronously), RSS (anonymous and file-backed),
bytes per key, start-up from snapshot; Match p50/p99 for one probe and for batches over high:1/4/6/9 and
all 18 layers, both metrics, `ann` and exact float16; recall@1/@10 of ann against the exact float16 answer
on the same probes; float16-vs-float32 top-1 agreement (float32 exact answer accumulated while streaming);
the exact scan's time against the memory-bandwidth bound measured at the start of the run, and paired with a
read of the same bytes right after each scan (bench_keystore.paired: the host's bandwidth moves between minutes).

The 1M run benchmarks the VectorIndex (`AnnLayerIndex`) directly: 1M float32 keys in LMDB would be 37 GB
of a shared 75 GB disk. `--keystore` adds the full KeyStore (LMDB + snapshot check) at the given N.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_keystore import PairedReader, memory_bandwidth, paired, timed  # noqa: E402

from facekeys.bench.synthetic import SyntheticConfig, layer_profile  # noqa: E402
from facekeys.dims import DIM, N_LAYERS  # noqa: E402
from facekeys.layers import parse_layers  # noqa: E402
from facekeys.records import Filter  # noqa: E402
from facekeys.store.ann import FLAT_CANDIDATES, AnnLayerIndex  # noqa: E402
from facekeys.store.config import StoreConfig  # noqa: E402
from facekeys.store.flat import gpu_count  # noqa: E402
from facekeys.store.vectors import KeyAttrs  # noqa: E402

SUBSETS = ("high:1", "high:4", "high:6", "high:9", "all")
METRICS = ("cosine", "l2")
CHUNK = 8192


# -- workload ---------------------------------------------------------------------------------------
class Workload:
    """Streamed synthetic gallery + probes (same model as facekeys.bench.synthetic.make_workload)."""

    def __init__(self, n: int, genuine: int, impostors: int, cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0):
        self.n, self.cfg, self.seed = n, cfg, seed
        rng = np.random.default_rng(seed)
        self.latent_avg = (rng.standard_normal((N_LAYERS, DIM)) * cfg.mean_scale).astype(np.float32)
        self.aniso = rng.uniform(0.3, 1.7, size=(N_LAYERS, DIM)).astype(np.float32)
        self.basis = rng.standard_normal((cfg.nuisance_rank, N_LAYERS, DIM)).astype(np.float32)
        self.spread = layer_profile(cfg.identity_floor)[:, None] * self.aniso
        g = min(genuine, n)
        centres = self._centres(np.random.default_rng([seed, 1, 0]), 0)[:g] if g <= CHUNK else None
        if centres is None:
            raise ValueError("genuine probes are drawn from the first chunk: at most 8192")
        prng = np.random.default_rng([seed, 2])
        imp_centres = self._fresh_centres(prng, impostors)
        self.probes = np.concatenate([self._draw(prng, centres, cfg.probe_noise),
                                      self._draw(prng, imp_centres, cfg.probe_noise)])  # (P, 18, 512)
        self.labels = np.concatenate([np.arange(g), np.full(impostors, -1)])

    def _fresh_centres(self, rng, m):
        z = rng.standard_normal((m, N_LAYERS, DIM), dtype=np.float32)
        return self.latent_avg + self.cfg.identity_scale * self.spread * z

    def _centres(self, rng, start):
        m = min(CHUNK, self.n - start)
        return self._fresh_centres(rng, m)

    def _draw(self, rng, centres, noise):
        eps = self.aniso * rng.standard_normal(centres.shape, dtype=np.float32)
        coef = rng.standard_normal((len(centres), self.cfg.nuisance_rank), dtype=np.float32)
        eps += self.cfg.nuisance_scale * np.einsum("nr,rld->nld", coef, self.basis)
        return (centres + noise * eps).astype(np.float32)

    def unseen_probes(self, genuine: int, impostors: int) -> np.ndarray:
        """(genuine + impostors, 18, 512) probes no other part of the run uses: genuine ones of the identities from
        CHUNK on (`probes` holds those of the first ones; N <= CHUNK + genuine reuses those), then new impostors."""
        start = CHUNK if self.n > CHUNK + genuine else 0
        centres = self._centres(np.random.default_rng([self.seed, 1, start]), start)[:genuine]
        rng = np.random.default_rng([self.seed, 4])
        return np.concatenate([self._draw(rng, centres, self.cfg.probe_noise),
                               self._draw(rng, self._fresh_centres(rng, impostors), self.cfg.probe_noise)])

    def chunks(self):
        """(start, gallery chunk (m, 18, 512) float32): key i is identity i."""
        for s in range(0, self.n, CHUNK):
            rng = np.random.default_rng([self.seed, 1, s])
            centres = self._centres(rng, s)
            yield s, self._draw(np.random.default_rng([self.seed, 3, s]), centres, self.cfg.gallery_noise)


class Float32Truth:
    """Exact float32 top-k of every probe over every (subset, metric), accumulated chunk by chunk."""

    def __init__(self, probes, k=10):
        self.p64 = probes.astype(np.float64)
        self.k = k
        self.best = {(s, m): (np.zeros((len(probes), 0), np.int64), np.zeros((len(probes), 0))) for s in SUBSETS
                     for m in METRICS}

    def update(self, start, x):
        ips, n2 = [], []
        for layer in range(N_LAYERS):
            xl = x[:, layer, :].astype(np.float64)
            ips.append(xl @ self.p64[:, layer, :].T)  # (m, P)
            n2.append((xl * xl).sum(1))
        qn2 = (self.p64 * self.p64).sum(2)  # (P, 18)
        for (subset, metric), (rows, cost) in self.best.items():
            lay = parse_layers(subset)
            ip = sum(ips[l] for l in lay)
            xn2 = sum(n2[l] for l in lay)
            if metric == "l2":
                c = np.sqrt(np.maximum(xn2[:, None] + qn2[:, lay].sum(1)[None, :] - 2 * ip, 0))
            else:
                c = -ip / np.sqrt(xn2)[:, None] / np.sqrt(qn2[:, lay].sum(1))[None, :]
            c = c.T  # (P, m)
            r = np.broadcast_to(np.arange(start, start + len(x)), c.shape)
            rows2, cost2 = np.concatenate([rows, r], 1), np.concatenate([cost, c], 1)
            keep = np.argsort(cost2, 1, kind="stable")[:, : self.k]
            self.best[(subset, metric)] = (np.take_along_axis(rows2, keep, 1), np.take_along_axis(cost2, keep, 1))


# -- measurements -----------------------------------------------------------------------------------
def rss() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def gb(x) -> str:
    return f"{x / 1e9:.2f} GB"




def machine_lines(args) -> list[str]:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip().splitlines()
    gpu = ""
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    return [f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- machine: {model}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
            f"faiss {faiss.__version__} (GPUs it sees: {gpu_count()}){f'; GPU: {gpu}' if gpu else ''}",
            f"- command: `python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}`",
            f"- load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
            " (the box is shared with other engineers' processes)",
            f"- memory at start (`free -g`): {' / '.join(' '.join(l.split()) for l in free[:2])}"]


def run_index(args, lines):
    n = args.n
    wl = Workload(n, args.genuine, args.impostors)
    truth = Float32Truth(wl.probes)
    cfg = StoreConfig(index_mode="ann", ann_candidates=args.candidates, ann_refine=args.refine, ann_pq_m=args.pq_m,
                      ann_backend=args.backend, ann_threads=args.threads,
                      **({"ann_groups": tuple(args.groups)} if args.groups else {}))
    root = Path(args.workdir) / f"scale-{n}"
    shutil.rmtree(root, ignore_errors=True)
    ix = AnnLayerIndex(cfg, root, background=False)
    t0 = time.perf_counter()
    t_gen = t_truth = 0.0
    for s, x in wl.chunks():
        t_gen_end = time.perf_counter()
        truth.update(s, x)
        t_truth += time.perf_counter() - t_gen_end
        ids = np.arange(s + 1, s + len(x) + 1, dtype=np.int64)
        attrs = [KeyAttrs(f"id{i}", f"cam{i % 16}", float(i), float(i) + 1.0) for i in range(s, s + len(x))]
        ix.add(ids, x, attrs)
        if s % (CHUNK * 16) == 0:
            print(f"  added {s + len(x):,} keys, {time.perf_counter() - t0:.0f}s", flush=True)
    t_add = time.perf_counter() - t0 - t_truth
    t1 = time.perf_counter()
    ix.sync()
    t_sync = time.perf_counter() - t1
    mem = rss()
    disk = sum(f.stat().st_size for f in (root / "vectors").iterdir())
    t2 = time.perf_counter()
    ix.save_snapshot()
    t_snap = time.perf_counter() - t2
    if ix.backend == "pq":
        shards = len(next(iter(ix._segments[0].groups.values())))
        index_line = (f"- index: backend pq, {len(ix._segments)} segment(s) x {shards} shard(s); per layer mean + "
                      f"PQ{cfg.ann_pq_m}x4 ({cfg.ann_pq_m // 2} B/key/layer; a group marked /m uses m per layer), PQ "
                      f"fast-scan indexes for the single layers and the groups {', '.join(cfg.ann_groups)}; refine codes "
                      f"{f'PQ{cfg.ann_refine_m}x4 per layer ({cfg.ann_refine_m // 2} B/key/layer), used from 4 layers' if cfg.ann_refine_m else 'none'}; "
                      f"candidates per shard {cfg.ann_candidates or 'auto (256*sqrt(N/10k); refined subsets x2 x max(1, |S|/6), others x max(1, 4/|S|) capped by 32 MiB of re-rank reads)'}; "
                      f"kept after the refine {cfg.ann_refine or 'auto (256*sqrt(N/100k)*4/|S|, at least 256)'}")
    else:
        index_line = (f"- index: backend {ix.backend}, {len(ix._segments)} segment(s), each one flat float16 index of "
                      f"all 18 layers + norm columns (store/flat.py), {ix.device_bytes / n:,.0f} B/key on the GPU; "
                      f"candidates per segment {cfg.ann_candidates or f'{FLAT_CANDIDATES} (default)'}")
    lines += ["", f"### N = {n:,} keys (VectorIndex level: `AnnLayerIndex`), threads {cfg.ann_threads}", "",
              index_line,
              f"- build: add {t_add:.1f} s (generating the synthetic chunks + float32 -> float16 + mmap write; "
              f"excludes the float32 truth), train + encode {t_sync:.1f} s, snapshot write {t_snap:.1f} s",
              f"- RSS after build: {gb(mem['VmRSS'])} (anonymous {gb(mem['RssAnon'])}, file-backed {gb(mem['RssFile'])}); "
              f"peak {gb(mem['VmHWM'])}",
              f"- bytes per key: {ix.nbytes / n:,.0f} in the index (float16 vectors {N_LAYERS * DIM * 2:,} + codes "
              f"{sum(s.nbytes for s in ix._segments) / n:,.0f} + columns); float16 files on disk {disk / n:,.0f} "
              f"(allocated capacity)"]
    print("\n".join(lines[-5:]), flush=True)
    ix.close(snapshot=False)
    del ix
    t3 = time.perf_counter()
    ix = AnnLayerIndex.load(cfg, root, background=False)
    t_load = time.perf_counter() - t3
    mem2 = rss()
    lines.append(f"- start-up from snapshot: {t_load:.1f} s (index level; KeyStore adds the LMDB id scan, see below); "
                 f"RSS after reopen {gb(mem2['VmRSS'])} (anonymous {gb(mem2['RssAnon'])})")
    print(lines[-1], flush=True)
    bw = memory_bandwidth()
    lines.append(f"- measured read bandwidth (same run): {bw / 1e9:.1f} GB/s")
    lines.append(f"- the box's jitter before the Matches: {box_jitter()}")
    measure(ix, wl, truth, args, bw, lines)
    lines.append(f"- the box's jitter after them: {box_jitter()}")
    mem3 = rss()
    lines.append(f"- RSS at the end (after exact scans touched the float16 files): {gb(mem3['VmRSS'])} "
                 f"(anonymous {gb(mem3['RssAnon'])}, file-backed {gb(mem3['RssFile'])}: page cache, reclaimable)")
    ix.close(snapshot=False)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def box_jitter(mib: int = 64, repeats: int = 300) -> str:
    """Latency spread of one fixed job on this box: two threads each summing its own `mib` MiB array (a 500k-row
    shard's high:4 fast-scan codes are 64 MB), `repeats` times. A single-probe Match cannot have a smaller p99 /
    p50 than this job's, so it says how much of a Match's tail is the machine (shared: other tenants' work and
    memory traffic come and go)."""
    arrays = [np.ones((mib << 20) // 8) for _ in range(2)]
    pool = ThreadPoolExecutor(2)
    for _ in range(10):
        list(pool.map(np.sum, arrays))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        list(pool.map(np.sum, arrays))
        ts.append(time.perf_counter() - t)
    pool.shutdown()
    ts = np.array(ts) * 1e3
    p50, p99 = np.median(ts), np.percentile(ts, 99)
    blocks = [np.percentile(b, 99) for b in np.array_split(ts, repeats // 100)]
    return (f"2 threads x {mib} MiB sums, {repeats} times: p50 {p50:.2f} ms, p90 {np.percentile(ts, 90):.2f}, p99 "
            f"{p99:.2f} (p99 / p50 {p99 / p50:.2f}; p99 of each 100: {', '.join(f'{b:.1f}' for b in blocks)}), "
            f"max {ts.max():.1f}")


def measure(ix, wl, truth, args, bw, lines):
    P = len(wl.probes)
    genuine = wl.labels >= 0
    lines += ["", "| layers | metric | ann r@1 genuine | ann r@1 impostor | ann r@10 | ann p50 / p99 ms (1 probe) "
              f"| ann ms/probe (batch {args.batch}) | exact f16 p50 ms (1 probe) | bound ms | exact/bound "
              "| exact/paired read | f16 vs f32 top-1 changed | max abs score diff f16-f32 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    flt = Filter()
    reader = PairedReader(ix.rows * N_LAYERS * DIM * 2, cap_bytes=1 << 30)  # small: the float16 files need the RAM
    for subset in SUBSETS:
        lay = parse_layers(subset)
        for metric in METRICS:
            ex = ix.search(wl.probes, lay, metric, 10, flt, exact=True)
            an = ix.search(wl.probes, lay, metric, 10, flt)
            r1 = an.ids[:, 0] == ex.ids[:, 0]
            r10 = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(an.ids, ex.ids)])
            t_rows, t_cost = truth.best[(subset, metric)]
            f32_top1 = t_rows[:, 0] + 1
            moved = ex.ids[:, 0] != f32_top1
            changed = int(moved.sum())
            sign = -1 if metric == "cosine" else 1
            diff = np.abs(ex.scores[:, 0] - sign * t_cost[:, 0]).max()
            # where the top-1 moved: how far the float16 pick is behind the float32 top-1 in the float32 truth
            # (a near-tie when under the float16 storage error), inf when the pick is not in the truth's top 10
            gaps = [float(t_cost[i][t_rows[i] + 1 == ex.ids[i, 0]][0] - t_cost[i, 0])
                    if (t_rows[i] + 1 == ex.ids[i, 0]).any() else float("inf") for i in np.flatnonzero(moved)]
            moved_col = f"{changed}/{P}" + (f" (truth gap {max(gaps):.1e})" if gaps else "")
            one = [timed(lambda i=i: ix.search(wl.probes[i : i + 1], lay, metric, 10, flt), 0, 1)[0]
                   for i in range(min(P, args.timed))]
            b = min(args.batch, P)
            tb = timed(lambda: ix.search(wl.probes[:b], lay, metric, 10, flt), 1, 3)
            exact_one = lambda: ix.search(wl.probes[:1], lay, metric, 10, flt, exact=True)  # noqa: E731
            te = timed(exact_one, 1, args.exact_repeats)
            bound = ix.rows * len(lay) * DIM * 2 / bw
            pair, _, _ = paired(exact_one, reader, ix.rows * len(lay) * DIM * 2, 1, args.exact_repeats)
            lines.append(
                f"| {subset} | {metric} | {r1[genuine].mean():.3f} | {r1[~genuine].mean() if (~genuine).any() else float('nan'):.3f} "
                f"| {r10:.3f} | {np.median(one) * 1e3:.1f} / {np.percentile(one, 99) * 1e3:.1f} "
                f"| {np.median(tb) / b * 1e3:.2f} | {np.median(te) * 1e3:.0f} | {bound * 1e3:.0f} "
                f"| {np.median(te) / bound:.2f} | {pair:.2f} | {moved_col} | {diff:.1e} |")
            print(lines[-1], flush=True)


def run_keystore(args, lines):
    """Full KeyStore at N: LMDB + ann index, close (snapshot), reopen (snapshot checked against LMDB)."""
    from facekeys.records import MatchQuery, NewKey, Where
    from facekeys.store import KeyStore

    n = args.n
    wl = Workload(n, min(args.genuine, 100), min(args.impostors, 50))
    truth = Float32Truth(wl.probes)
    root = Path(args.workdir) / f"keystore-{n}"
    shutil.rmtree(root, ignore_errors=True)
    cfg = StoreConfig(map_size=int(n * 40_000 * 1.3) + (256 << 20), durable=False, index_mode="ann")
    t0 = time.perf_counter()
    store = KeyStore.open(root, cfg)
    t_truth = 0.0
    for s, x in wl.chunks():
        t = time.perf_counter()
        truth.update(s, x)
        t_truth += time.perf_counter() - t
        for b in range(0, len(x), 4096):
            store.enroll([NewKey(v, "bench", identity_id=f"id{s + b + j}", where=Where(f"cam{(s + b + j) % 16}"))
                          for j, v in enumerate(x[b : b + 4096])])
    t_enrol = time.perf_counter() - t0 - t_truth
    ix = store._indexes["bench"]
    t1 = time.perf_counter()
    ix.sync()
    t_sync = time.perf_counter() - t1
    # top-1 against the float32 truth: the float16 index alone (exact scan) and Match (those of its best k + 16 that
    # can rank re-scored from the float32 keys in LMDB), every subset and metric
    top1 = []
    genuine = wl.labels >= 0
    for subset in SUBSETS:
        lay = parse_layers(subset)
        for metric in METRICS:
            want = truth.best[(subset, metric)][0][:, 0] + 1  # key ids are rows + 1
            f16_ids = ix.search(wl.probes, lay, metric, 1, Filter(), exact=True).ids[:, 0]
            res = store.match(MatchQuery.build(wl.probes, "bench", subset, metric, top_k=1, exact=True))
            got = np.array([p.hits[0].key_id for p in res.results])
            res = store.match(MatchQuery.build(wl.probes, "bench", subset, metric, top_k=1))
            got_ann = np.array([p.hits[0].key_id for p in res.results])
            miss = got_ann != want
            top1.append(f"{subset} {metric}: {int((f16_ids != want).sum())} / {int((got != want).sum())} / "
                        f"{int(miss[genuine].sum())}+{int(miss[~genuine].sum())}")
    q = MatchQuery.build(wl.probes[:1], "bench", "high:4", "cosine", top_k=10)
    lat = timed(lambda: store.match(q), 3, 50)
    distinct = match_distinct(store, ix, wl.unseen_probes(100, 50))
    t2 = time.perf_counter()
    store.close()
    t_close = time.perf_counter() - t2
    t3 = time.perf_counter()
    store = KeyStore.open(root, cfg)
    t_open = time.perf_counter() - t3
    ok = store.stats().keys == n and store._indexes["bench"].trained
    lat2 = timed(lambda: store.match(q), 3, 50)
    store.close()
    lines += ["", f"### Full KeyStore at N = {n:,} (LMDB + ann)", "",
              f"- enrol (durable=False, batches of 4096): {t_enrol:.0f} s ({n / t_enrol:,.0f} keys/s incl. data generation); "
              f"background work finished synchronously: {t_sync:.0f} s",
              f"- close (final snapshot): {t_close:.1f} s; re-open from snapshot, checked against LMDB (id scan + digest + "
              f"content sample): {t_open:.1f} s; adopted without re-training: {ok}",
              f"- Match high:4 cosine top-10, 1 probe, through KeyStore.match: p50 {np.median(lat) * 1e3:.1f} ms, "
              f"p99 {np.percentile(lat, 99) * 1e3:.1f} ms (after reopen: p50 {np.median(lat2) * 1e3:.1f} ms)",
              *distinct,
              f"- top-1 differing from the float32 truth, of {len(wl.probes)} probes (float16 index exact scan / Match "
              f"exact=True / Match ann, genuine+impostor misses = ann recall; Match re-scores from the float32 keys in "
              f"LMDB those of the index's best k + 16 that can rank): "
              + "; ".join(top1)]
    print("\n".join(lines[-(5 + len(distinct)):]), flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def match_distinct(store, ix, probes) -> list[str]:
    """Match high:4 cosine once per probe, each a different probe none of the run's other Matches used, top_k=10
    for even probes and 1 for odd ones: every Match re-scores from the float32 values in LMDB those of the index's
    best k + 16 that can rank (the float16 error bounds), and at 1M keys those values are mostly not in the page
    cache (the major faults and the values read ahead say so); then the float16 index alone on the same probes."""
    from facekeys.records import MatchQuery

    table = store._table
    lay = parse_layers("high:4")
    lat, faults, reads, ahead = ([], []), ([], []), ([], []), ([], [])  # [0]: even probes, top_k=10; [1]: odd, 1
    for i in range(len(probes)):
        q = MatchQuery.build(probes[i : i + 1], "bench", "high:4", "cosine", top_k=1 if i % 2 else 10)
        f0, r0, a0 = resource.getrusage(resource.RUSAGE_SELF).ru_majflt, table.latents_read, table.latents_advised
        lat[i % 2].append(timed(lambda q=q: store.match(q), 0, 1)[0])
        faults[i % 2].append(resource.getrusage(resource.RUSAGE_SELF).ru_majflt - f0)
        reads[i % 2].append(table.latents_read - r0)
        ahead[i % 2].append(table.latents_advised - a0)
    k = 10 + store.config.rerank_extra
    alone = [timed(lambda i=i: ix.search(probes[i : i + 1], lay, "cosine", k, Filter()), 0, 1)[0]
             for i in range(len(probes))]
    out = []
    for odd in (0, 1):
        a, top_k = np.array(lat[odd]) * 1e3, 1 if odd else 10
        out.append(f"- Match high:4 cosine top-{top_k}, {len(a)} different probes: p50 {np.median(a):.1f} ms, "
                   f"p99 {np.percentile(a, 99):.1f} ms; float32 values read per Match {np.mean(reads[odd]):.1f} "
                   f"(max {max(reads[odd])}, of the index's {top_k + store.config.rerank_extra}), of them read ahead "
                   f"at once {np.mean(ahead[odd]):.1f}; {np.mean(faults[odd]):.0f} major faults per Match")
    a = np.array(alone) * 1e3
    out.append(f"- the float16 index alone on the same {len(a)} probes (top {k}, no LMDB): p50 {np.median(a):.1f} ms, "
               f"p99 {np.percentile(a, 99):.1f} ms")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--genuine", type=int, default=200, help="genuine probes (from the first identities)")
    ap.add_argument("--impostors", type=int, default=100)
    ap.add_argument("--timed", type=int, default=100, help="single-probe Match timings per case")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--exact-repeats", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=0, help="ann_candidates per shard (0: sized from N)")
    ap.add_argument("--refine", type=int, default=0, help="ann_refine: kept by the refine step (0: sized from N)")
    ap.add_argument("--groups", nargs="*", help="layer groups (default: the config's)")
    ap.add_argument("--pq-m", type=int, default=64)
    ap.add_argument("--backend", default="auto", choices=("auto", "pq", "flat"),
                    help="ann candidate backend (auto: flat on a GPU the FAISS build sees, else pq)")
    ap.add_argument("--threads", type=int, default=2, help="ann_threads (search and scan threads)")
    ap.add_argument("--keystore", action="store_true", help="also benchmark the full KeyStore at --n")
    ap.add_argument("--no-index", action="store_true", help="skip the VectorIndex benchmark")
    ap.add_argument("--workdir", default=None, help="where index files go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="leave the index files in a new directory under --workdir")
    ap.add_argument("--out", help="write the Markdown here")
    ap.add_argument("--append", help="append the Markdown here")
    args = ap.parse_args()
    lines = [f"## bench_scale N = {args.n:,}", ""] + machine_lines(args)
    print("\n".join(lines), flush=True)
    tmp = tempfile.mkdtemp(prefix="bench_scale_", dir=args.workdir)
    args.workdir = tmp
    try:
        if not args.no_index:
            run_index(args, lines)
        if args.keystore:
            run_keystore(args, lines)
    finally:
        if args.keep:
            print(f"index files kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    lines.append(f"- load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
