"""Approximate candidates, exact answers: the `ann` index mode (and the float16 variant of `exact`).

Layout (one `AnnLayerIndex` per encoder):

    vectors   one growable float16 file per W+ layer, (rows, 512), memory-mapped (or in RAM when the
              index has no directory). Row r of every layer belongs to the r-th key ever added; rows are
              append-only, deleted keys are tombstoned and their rows zeroed.
    columns   key id, alive flag, per-layer squared norms (float32, of the stored float16 values) and the
              filter attributes, aligned with the rows, in RAM.
    codebooks per layer: the mean (vectors are centred) and a 4-bit PQ for each sub-quantiser count m in use
              (m/2 bytes per key and layer): `ann_pq_m` (64) for single layers and small groups, 32 for the
              large groups; trained in the background once `ann_train_min` keys exist.
    segments  immutable candidate generators over a row range: one FAISS PQ fast-scan index (inner
              product) per layer group, for every single layer and the configured groups (high:4, high:6/32,
              high:8/32, high:16/32, 9-16/32, low:4, low:2). A group's PQ is its layers' PQs of its m side by side,
              so its codes are the per-layer codes concatenated (each layer is encoded once per m). Built and swapped
              in by a background thread, never mutated after publication (searches need no lock against the
              builder); large segments are split into `ann_threads` shards searched in parallel. Each segment
              also holds the refine codes: every layer's 4-bit PQ at `ann_refine_m` (128) sub-quantisers, 64 B per
              key and layer (1,152 B per key), in RAM.
    buffer    rows not yet covered by a segment (new keys, or everything before the first training):
              scanned exactly, beside the segments. New keys are searchable the moment `add` returns.

Search over a layer subset S: a configured group of exactly S, else the groups covering S (fewest code bytes
scanned) are searched with the centred probe, zero on the group's layers outside S, so each returns the keys with
the best approximate <q_S - mu_S, x_S - mu_S> over exactly the subset's layers (this is -0.5 L2 up to the key's
norm term, and ranks cosine well because the norms concentrate). The refine step scores the `candidates` best of
every shard again with the finer refine codes over the whole subset (the same centred inner product, 4x the code
bits per layer of the 32-wide groups; table sums in C, `_f16dot.pq4`, 16 rows per AVX-512 step or 8 per AVX2
step) and keeps the best `refine_keep` of them per probe. Those, plus the buffer's exact best, are scored exactly
in float32 from the float16 vectors and the best k + rerank_extra re-scored in float64: returned scores are
exact values of the metric over the stored vectors, each with a proven bound on how far float16 rounding moved
it from the enrolled float32 key's (`f16_error_bounds`: the KeyStore re-scores from LMDB only the hits those
bounds leave in question); only the candidate set is approximate (recall measured in benchmarks/bench_scale.py).
Filters admitting few rows (fewer than `ann_exact_bytes` of float16 to scan) are answered by an exact scan of the
admitted rows; broader filters (and deletions) fetch proportionally more candidates and drop the excluded ones
(flat fast-scan indexes take no FAISS ID selector).

Why not IVF and why not one index per layer (measured on the synthetic pSp-like workload at 100k keys,
benchmarks/RESULTS.md): the latents have no cluster structure, so IVF-PQ with 64 of 1024 lists found
the exact nearest key of a single layer for only ~50 % of probes; and a union of per-layer candidate lists
reached genuine recall@1 0.95 with 1024 candidates per layer, because the subset's nearest key is often only
moderately near in each single layer. Scoring the subset's layers together (group indexes) reaches 0.99-1.0
at a fraction of the candidates. FAISS fast-scan accumulates in 16 bits and breaks beyond ~512
sub-quantisers (measured), hence groups of at most 512 / m layers. Large groups take 32 sub-quantisers per
layer (16 dims each) instead of 64: at 100k keys their candidates found the exact top-1 as often (high:6 from a
high:8 group: 0.995 vs 1.0 at 512 candidates; all 18 from high:16 + 17-18: 0.99 at 1024 candidates, as the four
64-wide groups high:8, 9-16, 17, 18 did) for half the code bytes per scan, while single layers and 4-layer
groups lose recall at 32 (one layer: 0.87 vs 0.99 at 4096 candidates), so they keep 64 (benchmarks/RESULTS.md).

Float16 scans: the C extension `facekeys.store._f16dot` (built by setup.py when a C compiler is present;
AVX-512, or AVX2 + F16C + FMA, chosen at import from CPUID, or portable C) converts each float16 exactly and
accumulates sum_l <q_l, x_l> over the subset's layers per row block, so each row of each layer is read once
from memory and the scan streams at the machine's read bandwidth. `F16_KERNEL` says which kernel is in use.
Without the extension (`F16_KERNEL == "numpy"`), numpy's float16 cast being scalar (~0.8 GB/s measured here),
the scan reinterprets the float16 bits as float32 with two integer operations ((int16 -> int32) << 13, clear
bits 28..30): that yields value * 2**-112 exactly (subnormals included), the 2**112 is folded into the probe,
and FAISS' SIMD dot (or BLAS for batches) scores the converted block. Per-layer squared norms are kept
layer-major, and each chunk's best rows are taken with a heap selection (`vectors.smallest_k`); one probe over a
row range is scored and selected in one pass by `_f16dot.top`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import faiss
import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument
from facekeys.records import Filter

from .config import StoreConfig, parse_group
from .flat import BUILD_ROWS, D_FLAT, FlatCandidates, flat_probe, gpu_count, norm_columns
from .rwlock import RWLock
from .vectors import (FilterColumns, KeyAttrs, SearchResult, _Codes, _costs, _one_omp_thread, exact_scores,
                      require_cosine_defined, select_layers, single_threaded_blas, smallest_k, write_ranked)

try:  # optional C kernel (setup.py builds it when it can); never compiled at import
    from . import _f16dot
except ImportError:
    _f16dot = None

log = logging.getLogger("facekeys.store.ann")
F16_KERNEL = f"c-{_f16dot.KERNEL}" if _f16dot is not None else "numpy"  # the float16 scan kernel in use

F16_MAX = 65504.0
_SCALE = np.float32(2.0**112)  # float16 bits << 13 read as float32 are the value times 2**-112
_CLEAR = np.int32(-1879048193)  # 0x8FFFFFFF: drops the sign-extension bits 28..30
BLOCK = 1024  # numpy fallback: rows converted at once (measured: 7.7 GB/s per core vs 5.3 at 256 rows, 4.8 at 8192)
SCAN_CHUNK = 1 << 16  # rows whose scores are reduced to a top list at once
C_MAX_PROBES = 64  # probes per scan call scored by the C kernel (more: the numpy/BLAS path)
RANGE_PART_MIN = 8192  # rows of a range per scan thread (fewer: one thread)
LISTED_PART_MIN = 1024  # listed (gathered) rows x layers per scan thread: scattered 1 KB reads wait on memory
#                         latency, not bandwidth, so two threads halve them from a few MiB on (1M keys, ad hoc,
#                         one part -> two: 1024 rows x 1 layer 0.24 -> 0.28 ms, 2048 x 1 0.46 -> 0.36, 810 x 4
#                         0.73 -> 0.51, 256 x 18 3.1 -> 1.7)
SHARD_MIN = 65_536  # segments with at least this many rows per thread are split into ann_threads shards
SMALL_BATCH = 32  # probes up to this many are scanned with faiss' SIMD dot instead of BLAS
FLAT_CANDIDATES = 256  # flat backend: default candidates per segment (see default_candidates)
# The refine step (pq backend; defaults measured at 1M keys, benchmarks/RESULTS.md section 2)
REFINE_MIN_LAYERS = 4  # subsets of fewer layers skip it: one layer's refine codes ranked the exact top-1 of 1M keys
#                        beyond 2,048 for 2 % of genuine probes (recall@1 0.98 vs 0.99 with the exact re-rank)
REFINE_BOOST = 2  # default fast-scan candidates x this (x |S| / 6 beyond 6 layers): the refine, not the re-rank,
#                   reads them
REFINE_MIN = 256  # candidates kept for the exact re-rank: 256 x sqrt(N / 100k) x 4 / |S|, at least this
REFINE_SHARE = 4  # ... and at least this fraction of the candidates a request asks for
COARSE_MIN_LAYERS = 5  # a group of fewer sub-quantisers per layer than ann_pq_m answers for this many subset layers
#                       or more: at 1M keys the exact top-1 of high:4 ranked 11,461 (p99, genuine probes, per shard)
#                       in 32-wide codes against 226 in 64-wide ones, while high:6 finds it at 0.995 from 32-wide
#                       codes (5 layers: served by 32-wide codes before this rule too, not measured apart)
RETRAIN_GROWTH = 2  # pq: retrain (and re-encode) once the store is this many times the keys the codebooks were
#                     trained on, while that was below ann_train_sample (the first training starts at ann_train_min)


def f16_bits_as_f32(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 array `src` (any shape) -> float32 view of `out` (int32, same shape) equal to src * 2**-112.

    Exact for every finite float16 (normal and subnormal); two SIMD integer passes instead of numpy's
    scalar float16 cast.
    """
    np.copyto(out, src.view(np.int16), casting="safe")  # sign-extends
    np.left_shift(out, 13, out=out)
    np.bitwise_and(out, _CLEAR, out=out)
    return out.view(np.float32)


def f16_to_f64(src: np.ndarray) -> np.ndarray:
    """Exact float64 values of a float16 array."""
    buf = np.empty(src.shape, np.int32)
    return f16_bits_as_f32(src, buf).astype(np.float64) * 2.0**112


def f16_error_bounds(norm16: np.ndarray, n_dims: int, metric: str) -> np.ndarray:
    """Upper bounds (m,) float64 on |score(q, x) - score(q, x16)| for keys whose float16 vectors over a subset of
    n_dims values have norms `norm16` (m,), whatever the probe q and the float32 originals x that rounded to them.

    Rounding to nearest moves an element by at most 2**-11 of its float16 value when that is normal and by at most
    2**-25 when it is subnormal or zero (`to_f16` refuses values float16 cannot hold), so r = x - x16 has
    ||r|| <= R = 2**-11 ||x16|| + 2**-25 sqrt(n_dims). l2: |d(q, x) - d(q, x16)| <= ||r|| (triangle inequality).
    cosine: x16 lies within R of x, so the angle between them is at most arcsin(R / ||x||), ||x|| >= ||x16|| - R,
    and a cosine moves by at most the angle its argument turns; a key whose norm is not above 2R gets +inf. The
    norms come from float32 squared norms (relative error <= 2**-24), the scores from float64 sums: the slack."""
    n16 = np.asarray(norm16, np.float64)
    r = 2.0**-11 * n16 * (1 + 1e-6) + 2.0**-25 * math.sqrt(n_dims)
    if metric == "l2":
        bound = r
    else:
        low = n16 * (1 - 1e-6) - r  # <= ||x||
        bound = np.full(len(r), np.inf)
        ok = low > r
        bound[ok] = np.arcsin(r[ok] / low[ok])
    return bound * (1 + 1e-6) + 1e-9


def to_f16(latents: np.ndarray) -> np.ndarray:
    """float32 (m, 18, 512) -> float16, failing fast on values float16 cannot hold."""
    if np.abs(latents).max(initial=0.0) > F16_MAX:
        raise InvalidArgument(f"latent values beyond +-{F16_MAX:g} cannot be stored as float16")
    return latents.astype(np.float16)


def _map_layers(fn, workers: int) -> list:
    if workers <= 1:
        return [fn(layer) for layer in range(N_LAYERS)]
    with ThreadPoolExecutor(max_workers=workers, initializer=_one_omp_thread) as ex:
        return list(ex.map(fn, range(N_LAYERS)))


def _dot_numpy(arrays: Sequence[np.ndarray], qs: Sequence[np.ndarray], rows, m: int) -> np.ndarray:
    """Fallback of the C kernel: (Q, m) float32 sum over layers of <q_l, x_l> for the rows (slice or index
    array) of float16 `arrays`, qs[l]: (Q, 512) probes pre-multiplied by 2**112 (see f16_bits_as_f32)."""
    nq = len(qs[0])
    ip = np.zeros((nq, m), np.float32)
    buf = np.empty((min(BLOCK, m), DIM), np.int32)
    tmp = np.empty(min(BLOCK, m), np.float32)
    for b in range(0, m, BLOCK):
        e = min(m, b + BLOCK)
        sel = slice(rows.start + b, rows.start + e) if isinstance(rows, slice) else rows[b:e]
        for a, q in zip(arrays, qs):
            x = f16_bits_as_f32(a[sel], buf[: e - b])  # (e-b, 512) float32, value * 2**-112
            if nq <= SMALL_BATCH:  # faiss SIMD dot, one thread: no BLAS thread start-up per block
                for i in range(nq):
                    faiss.fvec_inner_products_ny(faiss.swig_ptr(tmp), faiss.swig_ptr(q[i]), faiss.swig_ptr(x), DIM,
                                                 e - b)
                    ip[i, b:e] += tmp[: e - b]
            else:
                ip[:, b:e] += q @ x.T
    return ip


# -- float16 vector store -------------------------------------------------------------------------
class F16Store:
    """One growable (capacity, 512) float16 array per layer: memory-mapped files, or RAM when path is None."""

    def __init__(self, path: Optional[Path], rows: int = 0, capacity: int = 4096):
        self.path = path
        self.rows = rows  # rows in use
        self._arrays: list[np.ndarray] = []
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        self._grow(max(capacity, rows, 1024))

    def _file(self, layer: int) -> Path:
        return self.path / f"layer{layer:02d}.f16"

    def _grow(self, cap: int) -> None:
        arrays = []
        for layer in range(N_LAYERS):
            if self.path is None:
                a = np.zeros((cap, DIM), np.float16)
                if self._arrays:
                    a[: self.rows] = self._arrays[layer][: self.rows]
            else:
                f = self._file(layer)
                with open(f, "ab") as fh:
                    if fh.tell() < cap * DIM * 2:
                        fh.truncate(cap * DIM * 2)  # sparse: disk is used as rows are written
                a = np.memmap(f, np.float16, "r+", shape=(cap, DIM)).view(np.ndarray)
            arrays.append(a)
        self._arrays = arrays  # readers holding the old arrays keep valid mappings

    @property
    def capacity(self) -> int:
        return len(self._arrays[0])

    def reserve(self, rows: int) -> None:
        cap = self.capacity
        if rows > cap:
            while cap < rows:
                cap *= 2
            self._grow(cap)

    def write(self, start: int, x16: np.ndarray) -> None:
        """x16: (m, 18, 512) float16 into rows start..start+m (capacity reserved by the caller)."""
        for layer, a in enumerate(self._arrays):
            a[start : start + len(x16)] = x16[:, layer, :]

    def zero(self, rows: np.ndarray) -> None:
        for a in self._arrays:
            a[rows] = 0

    def layer(self, layer: int) -> np.ndarray:
        """(capacity, 512) float16 array of a layer; rows >= self.rows are unused."""
        return self._arrays[layer]

    def gather_f32(self, layer: int, rows) -> np.ndarray:
        """Exact float32 (m, 512) values of one layer (rows: slice or index array)."""
        src = self._arrays[layer][rows]
        buf = np.empty(src.shape, np.int32)
        return f16_bits_as_f32(src, buf) * _SCALE

    def flush(self) -> None:
        if self.path is None:
            return
        for layer in range(N_LAYERS):
            fd = os.open(self._file(layer), os.O_RDWR)
            try:
                os.fsync(fd)  # the memmaps share the page cache: fsync makes their writes durable
            finally:
                os.close(fd)

    @property
    def nbytes(self) -> int:
        return self.rows * N_LAYERS * DIM * 2


# -- candidate segments ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Codebooks:
    """Per-layer training result: the layer mean (vectors are centred before coding) and a 4-bit PQ for each
    sub-quantiser count m the groups use.

    The PQ of a layer group is the groups' per-layer PQs (of its m) side by side, so one per-layer encoding
    serves every group index of that m, and the groups' codes are the per-layer codes concatenated."""

    means: np.ndarray  # (18, 512) float32
    centroids: dict  # m -> (18, m, 16, 512 // m) float32

    def group_centroids(self, layers: Sequence[int], m: int) -> np.ndarray:
        """Centroids of the concatenated layers' PQ, flat in FAISS' (M, 16, dsub) order."""
        return np.ascontiguousarray(self.centroids[m][list(layers)], np.float32).ravel()

    def pq(self, layers: Sequence[int], m: int) -> faiss.ProductQuantizer:
        pq = faiss.ProductQuantizer(len(layers) * DIM, len(layers) * m, 4)
        faiss.copy_array_to_vector(self.group_centroids(layers, m), pq.centroids)
        return pq


@dataclass(frozen=True)
class Segment:
    """Candidate generators over a row range: one FAISS PQ fast-scan index per layer group (backend "pq"), or
    one flat float16 index of every layer (backend "flat", store/flat.py; not in snapshots: rebuilt at load)."""

    rows: np.ndarray  # (m,) int64 store rows, FAISS label i -> rows[i]
    groups: dict  # (layers tuple, m) -> ((faiss.IndexPQFastScan over the concatenated centred layers, row offset), ...)
    flat: Optional[FlatCandidates] = None
    refine: Optional[np.ndarray] = None  # (m, 18 * refine_m / 2) uint8: every layer's refine PQ codes side by side

    @property
    def nbytes(self) -> int:
        """Host bytes (a flat index on the GPU counts in device_bytes instead)."""
        host_flat = self.flat.nbytes if self.flat is not None and not self.flat.on_gpu else 0
        refine = self.refine.nbytes if self.refine is not None else 0
        return len(self.rows) * 8 + host_flat + refine + sum(ix.ntotal * ix.code_size
                                                             for shards in self.groups.values() for ix, _ in shards)

    @property
    def device_bytes(self) -> int:
        return self.flat.nbytes if self.flat is not None and self.flat.on_gpu else 0


def resolve_backend(config: StoreConfig) -> str:
    """The candidate backend in use: "pq", "flat-gpu" or "flat-cpu" (config.ann_backend, GPU presence)."""
    if config.ann_backend == "pq" or (config.ann_backend == "auto" and gpu_count() == 0):
        return "pq"
    return "flat-gpu" if gpu_count() > 0 else "flat-cpu"


def layer_groups(config: StoreConfig) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Every single layer (at ann_pq_m), plus the configured groups: (0-based layers, m), smallest first; none
    for the flat backend."""
    if resolve_backend(config) != "pq":
        return ()
    groups = {((layer,), config.ann_pq_m) for layer in range(N_LAYERS)}
    groups |= {parse_group(g, config.ann_pq_m) for g in config.ann_groups}
    return tuple(sorted(groups, key=lambda g: (len(g[0]), g[0], -g[1])))


def refine_width(config: StoreConfig) -> int:
    """Sub-quantisers per layer of the refine codes in use: config.ann_refine_m with the pq backend, else 0."""
    return config.ann_refine_m if resolve_backend(config) == "pq" else 0


def refines(config: StoreConfig, n_layers: int) -> bool:
    """Whether a search over n_layers goes through the refine step (refine codes configured, >= 4 layers)."""
    return bool(config.ann_refine_m) and n_layers >= REFINE_MIN_LAYERS


def default_candidates(n: int, n_layers: int, kk: int, config: StoreConfig) -> int:
    """Candidates taken from a group index shard, sized from the number of keys and the subset, and capped by
    the bytes the step after it reads per probe (see config.ann_candidates): the refine codes (m/2 B per layer)
    when the search refines, else the float16 vectors of the exact re-rank."""
    by_n = 256 * math.sqrt(max(n, 1) / 10_000)
    if refines(config, n_layers):  # more layers: the fast-scan codes rank the subset's best key lower
        by_n *= REFINE_BOOST * max(1.0, n_layers / 6)
        per_key = n_layers * config.ann_refine_m // 2
    else:
        by_n *= max(1.0, 4.0 / n_layers)  # few layers: less contrast
        per_key = n_layers * DIM * 2
    return int(max(kk, min(by_n, config.ann_rerank_bytes // per_key, config.ann_max_candidates)))


def refine_keep(n: int, n_layers: int, kk: int, config: StoreConfig, asked: int = 0) -> int:
    """Candidates per probe the refine step passes to the exact re-rank: config.ann_refine, else sized from the
    number of keys and the subset (more layers: the refine codes rank better), and at least a quarter of the
    candidates a request `asked` for; capped by the float16 bytes the re-rank may read."""
    by_n = int(REFINE_MIN * math.sqrt(max(n, 1) / 100_000) * REFINE_MIN_LAYERS / n_layers)
    keep = config.ann_refine or max(REFINE_MIN, by_n, asked // REFINE_SHARE)
    return int(max(kk, min(keep, config.ann_rerank_bytes // (n_layers * DIM * 2))))


def refine_tables(q_c: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Inner-product tables of centred probes q_c (Q, L, 512) with the subset's 4-bit PQ centroids (L, m, 16,
    512/m): (Q, L, m, 16) float32, entry [p, l, s, c] = <sub-vector s of q_c[p, l], centroid c of sub-quantiser s>."""
    L, m = centroids.shape[:2]
    q = q_c.reshape(len(q_c), L, m, DIM // m)
    return np.ascontiguousarray(np.einsum("plsd,lscd->plsc", q, centroids, optimize=True), np.float32)


def refine_scores(codes: np.ndarray, local: np.ndarray, layers: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Approximate centred inner products of the rows `local` of a segment's refine codes (rows, 18 * m/2) over
    `layers` (int64, one per table): the 4-bit PQ table sums (L, m, 16) of one probe, float32."""
    out = np.empty(len(local), np.float32)
    if _f16dot is not None:
        _f16dot.pq4(out, codes, local, layers, table)
        return out
    half = table.shape[1] // 2
    c = codes[local].reshape(len(local), N_LAYERS, half)[:, layers]  # (c, L, m/2) bytes: code 2b low, 2b+1 high
    sub = np.empty(c.shape[:2] + (2 * half,), np.intp)
    sub[..., 0::2], sub[..., 1::2] = c & 15, c >> 4
    L = len(layers)
    out[:] = table[np.arange(L)[:, None], np.arange(2 * half)[None, :], sub].sum((1, 2))
    return out


def best_distinct(rows: np.ndarray, score: np.ndarray, keep: int, copies: int) -> np.ndarray:
    """The `keep` rows of highest refine score, each once, where a row occurs at most `copies` times (once per
    group index that found it, its copies scoring alike): the best keep * copies entries hold at least `keep`
    distinct rows, so only they are de-duplicated (np.unique over all ~30k candidates of 18 layers at 1M keys took
    1.8 ms a search, ad hoc), and they are picked by the C heap (numpy's argpartition: ~0.3 ms for 30k)."""
    if len(rows) > keep * copies:
        pos = smallest_k(-score[None], keep * copies)[0][0]
        pos = pos[pos >= 0]
        rows, score = rows[pos], score[pos]
    if copies > 1:
        rows, first = np.unique(rows, return_index=True)
        score = score[first]
    if len(rows) > keep:
        rows = rows[np.argpartition(-score, keep - 1)[:keep]]
    return rows


class AnnLayerIndex(FilterColumns):
    """`VectorIndex` over float16 vectors: exact scans, or ANN candidates with an exact re-rank.

    ann=False gives the float16 variant of the exact mode (no segments, every search an exact scan).
    """

    def __init__(self, config: StoreConfig, path: Optional[Path] = None, ann: bool = True,
                 background: bool = True):
        self.config = config
        self.path = Path(path) if path is not None else None
        self.ann = ann
        self.mode = "ann" if ann else "exact"
        self.backend = resolve_backend(config) if ann else ""  # "pq", "flat-gpu", "flat-cpu"; "" for exact
        # Searches share _lock. Adds never take it: they write rows past _store.rows (F16Store and the columns grow
        # by copying, so a running search may read old or new arrays: both agree below its rows) and publish
        # _store.rows last. Removal (which zeroes rows) and the background publishes take it exclusively.
        self._lock = RWLock()
        self._write_mutex = threading.Lock()  # one add or remove at a time
        self._store = F16Store(self.path / "vectors" if self.path else None)
        cap = 1024
        self._ids = np.zeros(cap, np.int64)
        self._alive = np.zeros(cap, bool)
        self._norm2 = np.zeros((N_LAYERS, cap), np.float32)  # of the float16 values, layer-major
        self._norm2_sum = np.zeros(N_LAYERS)  # (18,) float64 over alive keys (flat cosine probes' r_S)
        self._identity = np.zeros(cap, np.int32)
        self._camera = np.zeros(cap, np.int32)
        self._t0 = np.zeros(cap, np.float64)
        self._t1 = np.zeros(cap, np.float64)
        self._pos: dict[int, int] = {}
        self._identities = _Codes()
        self._cameras = _Codes()
        self._count = 0  # alive keys
        # candidate side (ann)
        self._codebooks: Optional[Codebooks] = None  # per-layer means and PQs, once trained
        self._groups = layer_groups(config)
        self._refine_m = refine_width(config) if ann else 0  # the refine codes' PQ width (0: none)
        self._trained_n = 0  # keys when the templates were trained
        self._segments: tuple[Segment, ...] = ()
        self._covered = 0  # rows [0, covered) are in segments; the rest is the exact buffer
        self._last_add = 0.0
        self._dirty = False  # changed since the last snapshot
        self._last_snapshot = 0.0
        self._snapshot_gen = 0
        log.debug("float16 scan kernel: %s", F16_KERNEL)
        if config.ann_threads > 1:
            # our threads are the parallelism; multi-threaded BLAS (the cosine re-rank's GEMV) left OpenBLAS
            # workers spinning into the next scan: measured +45 % on an 18-layer exact scan right after it
            single_threaded_blas()
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.ann_threads), thread_name_prefix="fk-ann",
                                        initializer=_one_omp_thread)
        self._build_workers = 1  # layers trained/encoded in parallel: 1 in the background, ann_threads in sync()
        self._work_lock = threading.Lock()  # one trainer/merger at a time
        self._wake = threading.Condition()
        self._closed = False
        self._error: Optional[BaseException] = None
        self._thread = None
        if background:
            self.start_background()

    @property
    def device_bytes(self) -> int:
        """Bytes of the flat candidate indexes on the GPU (0 elsewhere)."""
        return sum(s.device_bytes for s in self._segments)

    def start_background(self) -> None:
        """Start the trainer/merger/snapshot thread (idempotent)."""
        if self._thread is None and not self._closed and (self.ann or self.path is not None):
            self._thread = threading.Thread(target=self._background, name="fk-ann-merger", daemon=True)
            self._thread.start()

    _COLUMNS = ("_ids", "_alive", "_identity", "_camera", "_t0", "_t1")  # (cap,) each
    _LAYER_MAJOR = ("_norm2",)  # (18, cap)

    # -- mutation ---------------------------------------------------------------------------------
    def _reserve(self, n: int) -> None:
        self._grow(n, self._store.rows)
        self._store.reserve(n)

    def add(self, ids: np.ndarray, latents: np.ndarray, attrs: Sequence[KeyAttrs]) -> None:
        ids = np.asarray(ids, np.int64)
        m = len(ids)  # latents: (m, 18, 512) float32
        if latents.shape != (m, N_LAYERS, DIM) or len(attrs) != m:
            raise InvalidArgument("add: ids, latents and attrs disagree in length or shape")
        x16 = to_f16(latents)  # (m, 18, 512) float16, outside the lock
        x64 = f16_to_f64(x16)
        norm2 = np.einsum("nld,nld->ln", x64, x64).astype(np.float32)  # (18, m), of the stored values
        del x64
        with self._write_mutex:  # not the search lock: rows past _store.rows are published last (see __init__)
            dup = [int(i) for i in ids if int(i) in self._pos]
            if dup or len(set(ids.tolist())) != m:
                raise InvalidArgument(f"add: key ids already indexed or repeated: {dup[:5]}")
            n = self._store.rows
            self._reserve(n + m)
            self._store.write(n, x16)
            s = slice(n, n + m)
            self._ids[s] = ids
            self._alive[s] = True
            self._norm2[:, s] = norm2
            self._identity[s] = [self._identities.code(a.identity_id) for a in attrs]
            self._camera[s] = [self._cameras.code(a.camera_id) for a in attrs]
            self._t0[s] = [a.t_start for a in attrs]
            self._t1[s] = [a.t_end for a in attrs]
            for j, key_id in enumerate(ids.tolist()):
                self._pos[key_id] = n + j
            self._norm2_sum += norm2.sum(1, dtype=np.float64)
            self._store.rows = n + m  # publish: searches starting from here see the new rows
            self._count += m  # after: a search counts at most the alive rows it sees
            self._last_add = time.monotonic()
            self._dirty = True
        self._notify()

    def remove(self, ids: np.ndarray) -> int:
        with self._write_mutex, self._lock.write():
            rows = np.array(sorted({self._pos.pop(int(i)) for i in ids if int(i) in self._pos}), np.int64)
            if len(rows) == 0:
                return 0
            self._alive[rows] = False
            self._store.zero(rows)  # a deleted key's latent does not linger in the vector files
            self._count -= len(rows)
            self._norm2_sum -= self._norm2[:, rows].sum(1, dtype=np.float64)
            self._dirty = True
        self._notify()
        return len(rows)

    # -- queries ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __contains__(self, key_id: int) -> bool:
        return int(key_id) in self._pos

    @property
    def rows(self) -> int:
        return self._store.rows

    @property
    def nbytes(self) -> int:
        per_row = sum(getattr(self, c)[:1].nbytes for c in self._COLUMNS) + N_LAYERS * 4  # + norms
        return self._store.nbytes + self.rows * per_row + sum(s.nbytes for s in self._segments)

    @property
    def trained(self) -> bool:
        return self._codebooks is not None

    @property
    def buffered(self) -> int:
        """Rows searched by the exact buffer scan (not yet merged into a segment)."""
        return self._store.rows - self._covered

    def _admitted(self, flt: Filter, n: int) -> tuple[np.ndarray, int]:
        """(admitted mask over rows < n, admitted count). Unfiltered: the alive column itself (a view, read-only,
        valid under the read lock) and the alive count, with no 1-byte-per-row copy or sum per search."""
        if flt.empty:
            return self._alive[:n], self._count
        mask = self._restrict(self._alive[:n].copy(), flt, n)
        return mask, int(mask.sum())

    def _base_candidates(self, covered: int, n_layers: int, kk: int) -> int:
        """Default candidates per shard: config.ann_candidates when set, else sized from the covered rows (flat
        backend: FLAT_CANDIDATES, its candidates being in exact inner-product / l2 order)."""
        if self.config.ann_candidates:
            return max(kk, self.config.ann_candidates)
        if self.backend != "pq":
            return max(kk, FLAT_CANDIDATES)
        return default_candidates(covered, n_layers, kk, self.config)

    def default_candidates(self, layers: Sequence[int], k: int = 1) -> int:
        """What candidates=0 means now for an unfiltered search over `layers` (top k); 0 when that search is
        an exact scan (float16 exact mode, not trained yet, or fewer keys than ann_exact_bytes is worth)."""
        with self._lock.read():
            if (not self.ann or not self._segments
                    or self._count * len(layers) * DIM * 2 <= self.config.ann_exact_bytes):
                return 0
            return self._base_candidates(self._covered, len(layers), k + self.config.rerank_extra)

    def check_params(self, candidates: int = 0) -> None:
        hi = self.config.ann_max_candidates
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or not 0 <= candidates <= hi:
            raise InvalidArgument(f"candidates must be in 0..{hi} (0 = the store's default), got {candidates!r}")

    def search(self, probes: np.ndarray, layers: tuple[int, ...], metric: str, k: int, flt: Filter,
               candidates: int = 0, exact: bool = False) -> SearchResult:
        """Best k keys per probe over the layer subset. candidates: per-request ANN setting (0 = sized from
        the number of keys and the subset), bounded by config.ann_max_candidates; exact=True scans every
        admitted key (what the ANN answer is measured against)."""
        self.check_params(candidates)
        if self._error is not None:
            raise RuntimeError("the ANN background worker failed") from self._error
        lay = list(layers)
        q_all = np.ascontiguousarray(select_layers(probes, layers), dtype=np.float32)  # (Q, |S|, 512)
        nq = len(q_all)
        require_cosine_defined(q_all, metric)
        kk = k + self.config.rerank_extra
        with self._lock.read():
            n = self._store.rows
            mask, searched = self._admitted(flt, n)
            if searched == 0:
                empty = np.zeros((nq, 0))
                return SearchResult(empty.astype(np.int64), empty, 0)
            segments, covered = self._segments, self._covered
            exact_all = (exact or not self.ann or not segments
                         or searched * len(lay) * DIM * 2 <= self.config.ann_exact_bytes)
            if exact_all:
                pools = self._scan(q_all, lay, metric, min(kk, searched), np.flatnonzero(mask)
                                   if searched < n else slice(0, n))
            else:
                pools = self._ann_pools(q_all, lay, metric, kk, segments, covered, mask, searched, candidates)
                # buffered rows (>= covered) never meet the segments' rows (< covered): joining needs no dedup
                buf_rows = np.flatnonzero(mask[covered:n]) + covered
                for i in range(nq):  # float32 scores of the pool (exact float16 values), best kk kept
                    rows = np.concatenate([pools[i], buf_rows]) if 0 < len(buf_rows) <= 4096 else pools[i]
                    if len(rows):
                        pools[i] = self._scan(q_all[i : i + 1], lay, metric, min(kk, len(rows)), rows)[0]
                if len(buf_rows) > 4096:
                    extra = self._scan(q_all, lay, metric, min(kk, len(buf_rows)), buf_rows)
                    pools = [np.concatenate([a, b]) for a, b in zip(pools, extra)]
            return self._rerank(q_all, lay, metric, k, pools, searched)

    # exact float16 scan ---------------------------------------------------------------------------
    def _scan(self, q_all, lay, metric, kk, rows) -> list[np.ndarray]:
        """Exact-scan candidates: per probe, the kk best rows (float32 scores of the float16 vectors)."""
        n_rows = (rows.stop - rows.start) if isinstance(rows, slice) else len(rows)
        per_part = RANGE_PART_MIN if isinstance(rows, slice) else math.ceil(LISTED_PART_MIN / len(lay))
        parts = max(1, min(self.config.ann_threads, n_rows // per_part))
        if parts == 1:
            best_rows, best_cost = self._scan_part(q_all, lay, metric, kk, rows)
        else:
            if isinstance(rows, slice):
                cuts = np.linspace(rows.start, rows.stop, parts + 1).astype(int)
                pieces = [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
            else:
                pieces = np.array_split(rows, parts)
            # one probe: the caller scans the first piece (one thread wake-up less; its FAISS heap call on at most
            # SCAN_CHUNK values stays serial). Batches: every piece in the pool (single-threaded OpenMP there).
            mine = pieces[:1] if len(q_all) == 1 else []
            futs = [self._pool.submit(self._scan_part, q_all, lay, metric, kk, p) for p in pieces[len(mine):]]
            res = [self._scan_part(q_all, lay, metric, kk, p) for p in mine] + [f.result() for f in futs]
            best_rows = np.concatenate([r[0] for r in res], 1)
            best_cost = np.concatenate([r[1] for r in res], 1)
        return [r[np.isfinite(c)] for r, c in zip(best_rows, best_cost)]

    def _scan_part(self, q_all, lay, metric, kk, rows):
        """Per probe, the kk best of `rows` (slice or index array): (Q, <=kk) rows and float32 costs (+inf pads).
        cost = ||x_S||^2 - 2 <q_S, x_S> (l2: the squared distance less ||q_S||^2) or -<q_S, x_S> / ||x_S||
        (cosine: times ||q_S||); both rank like the metric for a fixed probe."""
        nq = len(q_all)
        arrays = [self._store.layer(layer) for layer in lay]
        norm2 = [self._norm2[layer] for layer in lay]  # (cap,) views, layer-major
        kernel = _f16dot if nq <= C_MAX_PROBES else None
        if kernel is not None:
            q = np.ascontiguousarray(q_all, np.float32)  # (Q, |S|, 512)
        else:
            q = [np.ascontiguousarray(q_all[:, j, :] * _SCALE) for j in range(len(lay))]  # (Q, 512) each
        if kernel is not None and nq == 1 and isinstance(rows, slice):  # products, costs and selection in one pass
            pos = np.full((1, kk), -1, np.int64)
            vals = np.full((1, kk), np.inf, np.float32)
            kernel.top(q[0], arrays, norm2, metric, pos[0], vals[0], rows.start, rows.stop)
            return pos, vals
        if isinstance(rows, slice):
            chunks = [slice(s, min(rows.stop, s + SCAN_CHUNK)) for s in range(rows.start, rows.stop, SCAN_CHUNK)]
        else:
            rows = np.ascontiguousarray(rows, np.int64)
            chunks = [rows[s : s + SCAN_CHUNK] for s in range(0, len(rows), SCAN_CHUNK)]
        found_rows, found_cost = [], []
        for chunk in chunks:
            row_ids = np.arange(chunk.start, chunk.stop) if isinstance(chunk, slice) else chunk
            m = len(row_ids)
            where = (chunk.start, chunk.stop) if isinstance(chunk, slice) else (chunk,)
            if kernel is not None and nq == 1:  # one probe: the kernel forms the costs as it reads
                cost = np.empty((1, m), np.float32)
                kernel.dot(cost, q, arrays, *where, norms=norm2, metric=metric)
            else:
                if kernel is not None:
                    ip = np.empty((nq, m), np.float32)
                    kernel.dot(ip, q, arrays, *where)
                else:
                    ip = _dot_numpy(arrays, q, chunk, m)
                cost = _costs(ip, norm2, chunk, metric)
            pos, best = smallest_k(cost, kk)  # (Q, <=kk), -1 / +inf where fewer selectable
            found_rows.append(np.where(pos >= 0, row_ids[np.maximum(pos, 0)], -1))
            found_cost.append(np.where(pos >= 0, best, np.float32(np.inf)))
        if not found_rows:
            return np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32)
        best_rows = np.concatenate(found_rows, 1) if len(found_rows) > 1 else found_rows[0]
        best_cost = np.concatenate(found_cost, 1) if len(found_cost) > 1 else found_cost[0]
        if best_rows.shape[1] > kk:
            pos, best = smallest_k(best_cost, kk)
            best_rows = np.where(pos >= 0, np.take_along_axis(best_rows, np.maximum(pos, 0), 1), -1)
            best_cost = np.where(pos >= 0, best, np.float32(np.inf))
        return best_rows, best_cost

    # ANN candidates -------------------------------------------------------------------------------
    def cover(self, layers: Sequence[int]) -> list[tuple[tuple[tuple[int, ...], int], tuple[int, ...]]]:
        """Group indexes that together hold the subset: a configured group of exactly the subset's layers (the
        finest if several; not coarser than ann_pq_m below COARSE_MIN_LAYERS), whatever its bytes (one joint
        ranking; wider sub-quantisers are configured for recall); else greedily (most new subset layers per byte
        of codes scanned, then most layers, then the finer PQ; a group coarser than ann_pq_m only where it answers
        for at least COARSE_MIN_LAYERS of them): [((group layers, m), subset layers it answers for)].
        FAISS fast-scan accumulates in 16 bits and breaks beyond ~512 sub-quantisers (measured), so a group
        holds at most 512 / m layers and a larger subset is answered by several groups whose candidates are
        pooled."""
        left = set(layers)
        same = [g for g in self._groups if set(g[0]) == left
                and (g[1] >= self.config.ann_pq_m or len(g[0]) >= COARSE_MIN_LAYERS)]
        if same:
            g = max(same, key=lambda g: g[1])
            return [(g, g[0])]
        out = []

        def gain(g):
            new = len(left & set(g[0]))
            if g[1] < self.config.ann_pq_m and new < COARSE_MIN_LAYERS:
                return 0.0, 0, 0  # too coarse for so few layers (single layers at ann_pq_m always cover)
            return new / (len(g[0]) * g[1]), new, g[1]

        while left:
            g = max(self._groups, key=gain)
            part = tuple(sorted(left & set(g[0])))
            out.append((g, part))
            left -= set(part)
        return out

    def _ann_pools(self, q_all, lay, metric, kk, segments, covered, mask, searched, candidates) -> list[np.ndarray]:
        """Per probe, candidate rows: the best `candidates` of each segment shard by the approximate
        inner product of the centred vectors over the subset (PQ fast-scan of the group indexes covering
        the subset; a group's layers outside the subset get a zero probe, so they add nothing)."""
        cfg = self.config
        c = candidates or self._base_candidates(covered, len(lay), kk)
        frac = searched / max(1, len(mask))
        if frac < 1.0:  # filtered (or deletions): fetch more, drop the excluded afterwards
            c = int(min(cfg.ann_max_candidates, math.ceil(c / max(frac, 1e-3))))
        if self.backend != "pq":
            return self._flat_pools(q_all, lay, metric, kk, c, segments, covered, mask)
        books = self._codebooks
        means = books.means
        tables = None
        if refines(cfg, len(lay)):  # (Q, |S|, m, 16) tables: centred probes x refine PQ (pq: _refine_m = ann_refine_m)
            tables = refine_tables(q_all - means[lay], books.centroids[self._refine_m][lay])
            lay64 = np.asarray(lay, np.int64)
        jobs = []
        cover = self.cover(lay)
        for group, part in cover:
            glay = group[0]
            qg = np.zeros((len(q_all), len(glay), DIM), np.float32)  # (Q, |G|, 512): zero outside the subset
            for layer in part:
                qg[:, glay.index(layer), :] = q_all[:, lay.index(layer), :] - means[layer]
            qg = qg.reshape(len(q_all), -1)
            # the re-rank budget is shared by the groups in proportion to the subset layers each answers for (at 1M,
            # all 18 layers = high:16 + 17-18: recall@1 0.965 vs 0.955 with equal shares, ad hoc, same latency)
            cg = max(kk, c * len(part) // len(lay))
            jobs += [(seg, shard, qg, cg) for seg in segments for shard in seg.groups[group]]

        def one(job):
            """Per probe: the shard's admitted candidates (store rows) and their refine scores (None without)."""
            seg, (ix, offset), qg, cg = job
            _, I = ix.search(qg, min(cg, ix.ntotal))
            out = []
            for p, found in enumerate(I):
                local = offset + found[found >= 0]
                local = local[mask[seg.rows[local]]]
                score = refine_scores(seg.refine, local, lay64, tables[p]) if tables is not None else None
                out.append((seg.rows[local], score))
            return out

        found = list(self._pool.map(one, jobs)) if len(jobs) > 1 else [one(jobs[0])]
        keep = refine_keep(covered, len(lay), kk, cfg, candidates)
        pools = []
        for p in range(len(q_all)):
            rows = np.concatenate([f[p][0] for f in found])
            if tables is not None:  # the refine step: the best `keep` by the finer codes
                rows = best_distinct(rows, np.concatenate([f[p][1] for f in found]), keep, len(cover))
            elif len(cover) > 1:  # shards and segments hold disjoint rows; only several groups name a row twice
                rows = np.unique(rows)
            pools.append(rows)
        return pools

    def _flat_pools(self, q_all, lay, metric, kk, c, segments, covered, mask) -> list[np.ndarray]:
        """Flat backend: per probe, the best `c` rows of every segment by the flat index's exact inner product
        (l2: in the metric's order; store/flat.py). Where a segment cannot return `c` (the GPU's k limit, e.g.
        a selective filter's over-fetch), the admitted covered rows are scanned exactly instead: never fewer
        candidates than asked for."""
        if any(min(c, seg.flat.ntotal) > seg.flat.max_k for seg in segments):
            rows = np.flatnonzero(mask[:covered])
            return self._scan(q_all, lay, metric, min(kk, len(rows)), rows) if len(rows) else \
                [np.zeros(0, np.int64) for _ in range(len(q_all))]
        qf = flat_probe(q_all, lay, metric, self._norm2_sum / max(1, self._count))  # (Q, D_FLAT)
        found = [np.where(I >= 0, seg.rows[np.maximum(I, 0)], -1) for seg in segments
                 for I in [seg.flat.search(qf, c)]]
        found = np.concatenate(found, 1) if len(found) > 1 else found[0]
        pools = []
        for rows in found:  # segments hold disjoint rows: no duplicates
            rows = rows[rows >= 0]
            pools.append(rows[mask[rows]])
        return pools

    # exact re-rank --------------------------------------------------------------------------------
    def _rerank(self, q_all, lay, metric, k, pools, searched) -> SearchResult:
        nq = len(q_all)
        kout = min(k, searched)
        ids = np.full((nq, kout), -1, np.int64)
        scores = np.zeros((nq, kout), np.float64)
        bounds = np.zeros((nq, kout), np.float64)
        for i, rows in enumerate(pools):
            rows = np.unique(rows)
            rows = rows[self._alive[rows]]
            if len(rows) == 0:
                continue
            s = exact_scores(q_all[i], [self._store.layer(layer) for layer in lay], rows, metric)
            order = write_ranked(ids[i], scores[i], self._ids[rows], s, metric)
            kept = rows[order]
            norm16 = np.sqrt(self._norm2[np.ix_(lay, kept)].sum(0, dtype=np.float64))  # (<= k,) of the float16 vectors
            bounds[i, : len(kept)] = f16_error_bounds(norm16, len(lay) * DIM, metric)
        return SearchResult(ids, scores, searched, bounds)

    # -- background training and merging -----------------------------------------------------------
    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _background(self) -> None:
        _one_omp_thread()
        while not self._closed:
            try:
                did = self.work_once()
            except Exception as e:  # noqa: BLE001 - surfaced to every later search, then the thread ends
                log.exception("ANN background worker failed")
                self._error = e
                return
            if not did:
                with self._wake:
                    if not self._closed:
                        self._wake.wait(timeout=max(0.05, self.config.ann_merge_idle_s / 2))

    def pending(self, force: bool = False) -> str:
        """What the background worker would do next: '', 'train', 'merge', 'compact', 'retrain' or 'snapshot'.
        force: merge any buffer now and snapshot whenever dirty (sync, close)."""
        n = self._store.rows
        idle = force or time.monotonic() - self._last_add >= self.config.ann_merge_idle_s
        if not self.ann:
            pass
        elif self._codebooks is None:
            if self._count >= self.config.ann_train_min:
                return "train"
        else:
            buf = n - self._covered
            if buf >= self.config.ann_merge_rows or (buf > 0 and idle):
                return "merge"
            if len(self._segments) > self.config.ann_max_segments:
                return "compact"
            if (self.backend == "pq" and self._trained_n < self.config.ann_train_sample
                    and self._count >= RETRAIN_GROWTH * self._trained_n):
                return "retrain"
        if self.path is not None and self._dirty and idle and (
                force or time.monotonic() - self._last_snapshot >= self.config.snapshot_interval_s):
            return "snapshot"
        return ""

    def work_once(self, force: bool = False) -> str:
        """Do one pending step (train, merge, compact, retrain or snapshot); returns it ('' = nothing to do)."""
        with self._work_lock:
            job = self.pending(force)
            if job == "train":
                self._train()
                self._merge()
            elif job == "retrain":
                self._retrain()
            elif job == "merge":
                self._merge()
            elif job == "compact":
                self._compact()
            elif job == "snapshot":
                self.save_snapshot()
            return job

    def sync(self, snapshot: bool = False) -> None:
        """Train/merge/compact now in the caller's thread until nothing is left (tests, benchmarks, close)."""
        self._build_workers = max(1, self.config.ann_threads)
        try:
            while True:
                job = self.pending(force=True)
                if not job or (job == "snapshot" and not snapshot):
                    break
                self.work_once(force=True)
        finally:
            self._build_workers = 1
        if self._error is not None:
            raise RuntimeError("the ANN background worker failed") from self._error

    def _train(self) -> None:
        """First training: the codebooks are published (outside any lock while training)."""
        books, trained_n = self._train_books()
        with self._lock.write():
            self._codebooks = books
            self._trained_n = trained_n

    def _retrain(self) -> None:
        """The store has grown RETRAIN_GROWTH-fold since the codebooks were trained on all of it (a sample below
        ann_train_sample): train on a fresh sample, re-encode every covered row into one segment, and publish
        codebooks and segment together (a segment's codes only mean something with its own means)."""
        covered = self._covered
        books, trained_n = self._train_books()
        rows = np.arange(covered)
        seg = self._build_segment(rows[self._alive[:covered]], books)
        with self._lock.write():
            self._codebooks, self._trained_n = books, trained_n
            self._segments = (seg,)
            self._dirty = True

    def _train_books(self) -> tuple[Codebooks, int]:
        """Per-layer mean and 4-bit PQ from a sample of the alive keys (outside any lock); (codebooks, alive keys
        when trained)."""
        t0 = time.perf_counter()
        n = self._store.rows
        alive = np.flatnonzero(self._alive[:n])
        rng = np.random.default_rng(n)
        sample = np.sort(rng.choice(alive, min(len(alive), self.config.ann_train_sample), replace=False))
        ms = sorted({m for _, m in self._groups} | ({self._refine_m} if self._refine_m else set()))  # none for flat

        def train(layer):
            x = self._store.gather_f32(layer, sample)  # (s, 512)
            mean = x.mean(0)
            x = np.ascontiguousarray(x - mean)
            books = {}
            for m in ms:
                pq = faiss.ProductQuantizer(DIM, m, 4)
                if gpu_count() > 0:  # k-means assignment on the GPU (own resources: one per training thread)
                    res = faiss.StandardGpuResources()
                    pq.assign_index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(DIM // m))
                pq.train(x)
                pq.assign_index = None
                books[m] = faiss.vector_to_array(pq.centroids).reshape(m, 16, DIM // m)
            return mean, books

        out = _map_layers(train, self._build_workers)
        books = Codebooks(np.stack([o[0] for o in out]), {m: np.stack([o[1][m] for o in out]) for m in ms})
        log.info("ANN: trained %d layers (PQ %sx4) on %d of %d keys in %.1fs", N_LAYERS, "/".join(map(str, ms)),
                 len(sample), len(alive), time.perf_counter() - t0)
        return books, len(alive)

    def _build_flat(self, rows: np.ndarray) -> Segment:
        """Flat backend: one flat index over the rows' float16 values of every layer and their norm columns,
        converted and added BUILD_ROWS at a time (layers converted in parallel by the build workers)."""
        flat = FlatCandidates(on_gpu=self.backend == "flat-gpu")
        x = np.empty((min(len(rows), BUILD_ROWS), D_FLAT), np.float32)
        for s in range(0, len(rows), BUILD_ROWS):
            r = rows[s : s + BUILD_ROWS]
            sel = slice(int(r[0]), int(r[-1]) + 1) if r[-1] - r[0] + 1 == len(r) else r
            xb = x[: len(r)]

            def convert(layer, r=r, sel=sel, xb=xb):
                xb[:, layer * DIM : (layer + 1) * DIM] = self._store.gather_f32(layer, sel)

            _map_layers(convert, self._build_workers)
            xb[:, N_LAYERS * DIM :] = norm_columns(self._norm2[:, r].T)
            flat.add(xb)
        return Segment(rows, {}, flat)

    def _build_segment(self, rows: np.ndarray, books: Optional[Codebooks] = None) -> Segment:
        """Encode each layer once (with `books`, default the published codebooks), then assemble every group
        index from the concatenated codes; large segments are split into `ann_threads` shards so that one
        search uses every core."""
        if self.backend != "pq":
            return self._build_flat(rows)
        books = books or self._codebooks
        ms = sorted({m for _, m in self._groups})
        codes = {m: [None] * N_LAYERS for m in ms}  # m -> per layer (rows, m/2) uint8
        rm, half = self._refine_m, self._refine_m // 2
        refine = np.empty((len(rows), N_LAYERS * half), np.uint8) if rm else None  # (rows, 18 * m/2)

        def encode(layer):
            pqs = {m: books.pq((layer,), m) for m in set(ms) | ({rm} if rm else set())}
            out = {m: np.empty((len(rows), m // 2), np.uint8) for m in ms}
            for s in range(0, len(rows), SCAN_CHUNK):
                r = rows[s : s + SCAN_CHUNK]
                contiguous = r[-1] - r[0] + 1 == len(r)
                x = self._store.gather_f32(layer, slice(int(r[0]), int(r[-1]) + 1) if contiguous else r)
                x -= books.means[layer]
                for m in ms:
                    out[m][s : s + len(r)] = pqs[m].compute_codes(x)
                if rm:
                    refine[s : s + len(r), layer * half : (layer + 1) * half] = (
                        out[rm][s : s + len(r)] if rm in out else pqs[rm].compute_codes(x))
            for m in ms:
                codes[m][layer] = out[m]

        _map_layers(encode, self._build_workers)
        n_shards = max(1, min(self.config.ann_threads, len(rows) // SHARD_MIN))
        cuts = np.linspace(0, len(rows), n_shards + 1).astype(int)
        groups = {}
        for group in self._groups:
            glay, m = group
            shards = []
            for a, b in zip(cuts[:-1], cuts[1:]):
                flat = faiss.IndexPQ(len(glay) * DIM, len(glay) * m, 4, faiss.METRIC_INNER_PRODUCT)
                faiss.copy_array_to_vector(books.group_centroids(glay, m), flat.pq.centroids)
                flat.is_trained = True
                flat.add_sa_codes(np.ascontiguousarray(np.hstack([codes[m][l][a:b] for l in glay])))
                shards.append((faiss.IndexPQFastScan(flat), int(a)))
                del flat
            groups[group] = tuple(shards)
        return Segment(rows, groups, refine=refine)

    def _merge(self) -> None:
        """Cover the buffer rows [covered, n) with a new segment (built outside the lock, then published)."""
        start, end = self._covered, self._store.rows
        rows = np.arange(start, end)
        rows = rows[self._alive[start:end]]
        seg = self._build_segment(rows) if len(rows) else None
        with self._lock.write():
            if seg is not None:
                self._segments = self._segments + (seg,)
            self._covered = end
            self._dirty = True

    def _compact(self) -> None:
        """Rebuild segments (without their deleted rows) into one: every search visits every segment."""
        segs = sorted(self._segments, key=lambda s: len(s.rows))
        take = segs[:-1]  # tiered: the small ones into one; everything once they add up to half the largest
        if sum(len(s.rows) for s in take) * 2 >= len(segs[-1].rows):
            take = segs
        rows = np.sort(np.concatenate([s.rows for s in take]))
        rows = rows[self._alive[rows]]
        seg = self._build_segment(rows)
        with self._lock.write():
            keep = tuple(s for s in self._segments if all(s is not t for t in take))
            self._segments = keep + (seg,)
            self._dirty = True
        for s in take:  # no search holds them now (searches run under the read lock): free GPU memory at once
            if s.flat is not None:
                s.flat.release()

    # -- snapshots ----------------------------------------------------------------------------------
    def save_snapshot(self) -> Optional[Path]:
        """Write an atomic snapshot under path/snapshots (no-op without a path)."""
        from . import snapshot

        if self.path is None:
            return None
        with self._lock.read():
            n = self._store.rows
            cols = {name.lstrip("_"): getattr(self, name)[:n].copy() for name in self._COLUMNS}
            cols["norm2"] = np.ascontiguousarray(self._norm2[:, :n].T)  # (n, 18) on disk, as before
            state = snapshot.IndexState(
                rows=n, columns=cols, identities=list(self._identities.by_name),
                cameras=list(self._cameras.by_name), segments=self._segments,
                codebooks=self._codebooks, covered=self._covered, trained_n=self._trained_n,
                ann=self.ann, pq_m=self.config.ann_pq_m, groups=self._groups, refine_m=self._refine_m,
            )
            self._dirty = False
        self._store.flush()  # rows < n are on disk before the manifest names them
        out = snapshot.write(self.path / "snapshots", state)
        self._last_snapshot = time.monotonic()
        return out

    @classmethod
    def load(cls, config: StoreConfig, path: Path, ann: bool = True, background: bool = True) -> "AnnLayerIndex":
        """Open an index from its latest complete snapshot (raises snapshot.SnapshotError if none is usable)."""
        from . import snapshot

        state = snapshot.read(Path(path) / "snapshots")
        if state.ann != ann or (ann and (state.pq_m != config.ann_pq_m or state.refine_m != refine_width(config)
                                         or tuple(state.groups) != layer_groups(config))):
            raise snapshot.SnapshotError("snapshot was written with other index settings (mode, backend, PQ, "
                                         "refine codes or groups)")
        self = cls(config, path, ann=ann, background=False)
        n = state.rows
        files = [self.path / "vectors" / f"layer{l:02d}.f16" for l in range(N_LAYERS)]
        if any(not f.exists() or os.path.getsize(f) < n * DIM * 2 for f in files):
            raise snapshot.SnapshotError("vector files are missing or shorter than the snapshot says")
        self._reserve(n)  # columns (the store is still empty here)
        self._store = F16Store(self.path / "vectors", rows=n)
        for name in self._COLUMNS:
            getattr(self, name)[:n] = state.columns[name.lstrip("_")]
        self._norm2[:, :n] = state.columns["norm2"].T
        for name in state.identities:
            self._identities.code(name)
        for name in state.cameras:
            self._cameras.code(name)
        alive = np.flatnonzero(self._alive[:n])
        self._pos = dict(zip(self._ids[alive].tolist(), alive.tolist()))
        self._count = len(alive)
        self._norm2_sum = self._norm2[:, alive].sum(1, dtype=np.float64)
        self._codebooks, self._segments = state.codebooks, tuple(state.segments)
        if self.backend != "pq":  # flat indexes are not in snapshots: rebuilt from the float16 files
            self._build_workers = max(1, config.ann_threads)
            try:
                self._segments = tuple(self._build_flat(seg.rows) for seg in self._segments)
            finally:
                self._build_workers = 1
        self._covered, self._trained_n = state.covered, state.trained_n
        self._last_snapshot = time.monotonic()
        self._dirty = False
        if background:
            self.start_background()
        return self

    def alive_ids(self) -> np.ndarray:
        with self._lock.read():
            n = self._store.rows
            return np.sort(self._ids[:n][self._alive[:n]])

    def stored_f16(self, key_id: int) -> np.ndarray:
        """(18, 512) float16 stored for a key (snapshot content checks)."""
        row = self._pos[int(key_id)]
        return np.stack([self._store.layer(l)[row] for l in range(N_LAYERS)])

    def close(self, snapshot: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._notify()
        if self._thread is not None:
            self._thread.join()
        if snapshot and self.path is not None and self._dirty and self._error is None:
            self.save_snapshot()
        self._pool.shutdown(wait=True)
        for seg in self._segments:
            if seg.flat is not None:
                seg.flat.release()


class AnnFactory:
    """`index_factory` of the float16 modes (exact float16 and ann): one directory per index under root."""

    def __init__(self, config: StoreConfig, root: Path):
        self.config = config
        self.root = Path(root)
        self._live: list[AnnLayerIndex] = []

    def __call__(self, config: StoreConfig) -> AnnLayerIndex:
        import uuid

        ix = AnnLayerIndex(config, self.root / f"idx-{uuid.uuid4().hex[:12]}", ann=config.index_mode == "ann")
        self._live.append(ix)
        return ix

    def restore(self, table):
        """({encoder_id: index}, identity key counts) from snapshots checked against LMDB, or rebuilt.
        Indexes this factory handed out before (a re-open after a key-transform rotation) are closed first."""
        from . import snapshot

        for ix in self._live:
            ix.close(snapshot=False)  # stale (e.g. re-transformed keys): the content check rebuilds it
        indexes, counts = snapshot.restore(table, self.config, self.root, lambda: self(self.config))
        self._live = list(indexes.values())
        return indexes, counts
