"""Vector storage behind a narrow interface.

`VectorIndex` is everything the engine asks of its vector storage: add keys with the few scalar
attributes searches filter on, remove keys, search a layer subset. The default implementation keeps one
flat float32 row store per W+ layer in this process, scored by FAISS' flat kernels or the C kernel. A
distributed vector database (e.g. Milvus with one vector field per layer and scalar fields for the filters)
can implement the same protocol without the engine, the server or the indexer changing.

Exact search over a layer subset S (paper: the concatenation of the selected layers):
    <q_S, x_S>      = sum_{l in S} <q_l, x_l>            (one inner-product scan per layer index)
    ||x_S||^2       = sum_{l in S} ||x_l||^2              (per-layer squared norms kept beside the index)
    cosine(q, x)    = <q_S, x_S> / (||q_S|| ||x_S||)      (best = max)
    l2(q, x)        = sqrt(||q_S||^2 + ||x_S||^2 - 2 <q_S, x_S>)   (best = min)
The scan runs in float32 (memory-bandwidth bound), split into row blocks scored by a few threads (one
per core, each streaming its own rows; per-call BLAS threading pays a fork/join per layer and collapses
when another process holds a core). One probe is scored by the C kernel `_f16dot` (every selected layer of a
row block in one pass, two row streams per thread, costs and a bounded heap formed as the rows stream by: one
`_f16dot.top` call per scan thread, then one `_f16dot.rank` for the float64 re-rank and the order) or, without
the extension, FAISS' SIMD dot (`fvec_inner_products_ny`, one stream per call): both stream at the machine's
read bandwidth (~31-36 GB/s for two threads in its usual regime, where single-threaded OpenBLAS GEMV reaches
~13 GB/s per core); batches use single-threaded BLAS GEMM (see `single_threaded_blas`), which reads each row
once for all probes. Per-layer squared norms are kept layer-major, so a subset's norms are a few contiguous
adds. The best `k + rerank_extra` candidates of each probe are then re-scored in float64 directly from the
stored vectors, so returned scores are exact.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import faiss
import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument

from facekeys.records import Filter
from .rwlock import RWLock

try:  # optional C kernel (setup.py builds it when it can); never compiled at import
    from . import _f16dot
except ImportError:  # pragma: no cover - depends on the build
    _f16dot = None
# one-probe scan kernel: the C kernel streams two row ranges per thread; FAISS' SIMD dot streams one
F32_KERNEL = f"c-{_f16dot.KERNEL}" if _f16dot is not None else "faiss"

SCAN_CHUNK = 1 << 16  # rows scored at once: bounds the (rows, Q) score buffer of each scan thread
GATHER_BELOW = 0.25  # a filter admitting fewer rows than this fraction gathers them instead of masking
MIN_JOB_BYTES = 8 << 20  # one probe: a scan thread's job reads at least this much (below, a thread hand-off
#                          costs more than the second core's share of the read saves)
WAKE_BYTES = 1 << 20  # one probe: the calling thread's share is larger by this much, about what it reads while
#                       a pool thread wakes up (~30 us). 10k keys x 1 layer, 500 interleaved runs (ad hoc): scan /
#                       paired read 1.08-1.10 with it, 1.12-1.15 without; 4 layers: 1.06-1.07 either way


@dataclass(frozen=True)
class KeyAttrs:
    """The scalar fields a search can filter on."""

    identity_id: str
    camera_id: str
    t_start: float
    t_end: float


@dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # (Q, k') int64, best first; k' <= k
    scores: np.ndarray  # (Q, k') float64
    searched: int  # keys admitted by the filter
    bounds: Optional[np.ndarray] = None  # (Q, k') float64: |score - the enrolled (float32) key's score| <= bound,
    #                                        from indexes that keep rounded vectors; None: the scores are exact


class VectorIndex(Protocol):
    mode: str

    def add(self, ids: np.ndarray, latents: np.ndarray, attrs: Sequence[KeyAttrs]) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(
        self, probes: np.ndarray, layers: tuple[int, ...], metric: str, k: int, flt: Filter
    ) -> SearchResult: ...

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...


_BLAS_LIMIT = None


def single_threaded_blas() -> None:
    """Keep BLAS to one thread per call in this process (the scan threads provide the parallelism).
    Idempotent; called when a store with scan threads opens."""
    global _BLAS_LIMIT
    if _BLAS_LIMIT is None:
        from threadpoolctl import ThreadpoolController

        # numpy's OpenBLAS only: torch's own math libraries keep their threads for the models
        _BLAS_LIMIT = ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def _one_omp_thread() -> None:
    """FAISS' OpenMP in this thread uses one thread: parallelism comes from our own threads (layers, row
    ranges, shards). Two OpenMP threads per call on a busy 2-core box measured 7-10x slower (spin-waiting)."""
    faiss.omp_set_num_threads(1)


class _Codes:
    """Interns strings to small ints so filters compare integer columns."""

    def __init__(self):
        self.by_name: dict[str, int] = {}

    def code(self, name: str) -> int:
        return self.by_name.setdefault(name, len(self.by_name))

    def lookup(self, names: Sequence[str]) -> np.ndarray:
        return np.array([self.by_name[n] for n in names if n in self.by_name], np.int32)


def exact_scores(q: np.ndarray, views: Sequence[np.ndarray], rows: np.ndarray, metric: str) -> np.ndarray:
    """Float64 scores (m,) of one probe q (|S|, 512) float32 against the listed rows of the selected layers: the
    oracle formula (l2 = sqrt(sum (x - q)^2), cosine = <q, x> / (|q| |x|), 0 for a zero norm), accumulated in
    float64 from the exact values of the stored floats.

    views: per selected layer, a (n, 512) C-contiguous float32 or float16 array; rows: (m,) int64. The C kernel
    reads the rows in place (~40-60 us warm for 26 rows x 18 layers); numpy's path goes layer by layer, so no
    (m, |S| * 512) float64 copy is made (such a copy and its products took ~3.5 ms per search at 10k keys x 18
    layers in a cProfile)."""
    rows = np.ascontiguousarray(rows, np.int64)
    out = np.empty(len(rows), np.float64)
    if _f16dot is not None:
        _f16dot.exact(out, np.ascontiguousarray(q, np.float32), views, rows, metric)
        return out
    q64 = q.astype(np.float64)  # (|S|, 512)
    acc = np.zeros(len(rows))
    xn2 = np.zeros(len(rows))
    for qj, view in zip(q64, views):
        x = view[rows].astype(np.float64)  # (m, 512), exact for float16 and float32
        if metric == "l2":
            x -= qj
            acc += np.einsum("ij,ij->i", x, x)
        else:
            acc += x @ qj
            xn2 += np.einsum("ij,ij->i", x, x)
    if metric == "l2":
        return np.sqrt(acc, out=out)
    denom = np.sqrt(np.einsum("ld,ld->", q64, q64)) * np.sqrt(xn2)
    return np.divide(acc, denom, out=np.zeros_like(acc), where=denom > 0)


def select_layers(probes: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
    """probes (Q, 18, 512) float32 -> (Q, |S|, 512) over the selected layers: a view (no copy) when they are one
    run of consecutive layers (high:k, low:k, "a-b"), else a copy."""
    first, last = layers[0], layers[-1]
    if last - first + 1 == len(layers) and list(layers) == list(range(first, last + 1)):
        return probes[:, first : last + 1, :]
    return probes[:, list(layers), :]


def require_cosine_defined(q_all: np.ndarray, metric: str) -> None:
    """Cosine needs every probe (Q, |S|, 512) to be nonzero over the selected layers. (One probe: count_nonzero, a
    plain C call; `ndarray.any()` goes through numpy's Python-level reduction wrappers, ~30 us just after a scan has
    evicted the caches.)"""
    one = len(q_all) == 1
    if metric == "cosine" and not (np.count_nonzero(q_all) if one else q_all.reshape(len(q_all), -1).any(1).all()):
        raise InvalidArgument("probe is all zeros over the selected layers: cosine is undefined")


class FilterColumns:
    """Mixin for indexes that keep the filter columns `_identity`, `_camera` (codes of `_identities`,
    `_cameras`), `_t0`, `_t1` aligned with their rows: every (cap,) array named in `_COLUMNS` and (18, cap, ...)
    array named in `_LAYER_MAJOR` grows with `_grow`."""

    _COLUMNS: tuple[str, ...] = ()
    _LAYER_MAJOR: tuple[str, ...] = ()

    def _grow(self, n: int, rows: int) -> None:
        """Capacity for n rows (doubling), keeping the first `rows` of every column."""
        cap = len(self._ids)
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        for name in self._COLUMNS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[:rows] = old[:rows]
            setattr(self, name, new)
        for name in self._LAYER_MAJOR:  # np.empty: pages are touched (and cost memory) only as rows arrive
            old = getattr(self, name)
            new = np.empty((N_LAYERS, cap) + old.shape[2:], old.dtype)
            new[:, :rows] = old[:, :rows]
            setattr(self, name, new)

    def _restrict(self, mask: np.ndarray, flt: Filter, n: int) -> np.ndarray:
        """`mask` (n,) bool, narrowed in place to the rows `flt` admits."""
        if flt.camera_ids:
            mask &= np.isin(self._camera[:n], self._cameras.lookup(flt.camera_ids))
        if flt.identity_ids:
            mask &= np.isin(self._identity[:n], self._identities.lookup(flt.identity_ids))
        if flt.t_from:
            mask &= self._t1[:n] >= flt.t_from
        if flt.t_to:
            mask &= self._t0[:n] <= flt.t_to
        return mask


class FlatLayerIndex(FilterColumns):
    """Exact search: the raw float32 vectors of each W+ layer, flat, plus aligned columns.

    Each layer is one contiguous (capacity, 512) row block of a numpy array, the layout of a FAISS flat index's
    storage, scored by the C kernel (one probe: scan, selection and re-rank in `_f16dot.top` / `_f16dot.rank`) or
    FAISS' flat inner-product kernel / BLAS and ranked by a heap selection (`smallest_k`). The array is numpy's
    rather than an `IndexFlatIP`'s own `std::vector` because numpy puts large buffers on 2 MiB transparent huge
    pages (THP is madvise-only on these hosts, FAISS never advises): the same kernel over the same rows scans
    1-11 % faster from them in `benchmarks/bench_pages.py` (up to 29 % in earlier ad-hoc runs;
    benchmarks/RESULTS.md section 1).

    Adds never wait for searches: rows are append-only. A search reads `_n` once and touches rows below it only;
    an add writes its rows past `_n` (into new arrays when capacity grows: the old rows are copied first, so both
    arrays agree below `_n`, and a running search may read either) and publishes the new `_n` last. Only a
    removal, which compacts rows in place, takes the lock exclusively and waits for running searches."""

    mode = "exact"

    def __init__(self, rerank_extra: int = 16, threads: int = 0):
        self._rerank_extra = rerank_extra
        # row blocks scanned in parallel, BLAS itself kept to one thread; 0 = one per core, at most 8
        self._threads = threads or min(8, os.cpu_count() or 1)
        self._pool = None
        if self._threads > 1:
            single_threaded_blas()
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="scan", initializer=_one_omp_thread)
        self._lock = RWLock()  # searches shared; exclusive only for remove (adds publish rows past _n instead)
        self._write_mutex = threading.Lock()  # one add or remove at a time
        self._n = 0
        cap = 1024
        self._ids = np.zeros(cap, np.int64)
        self._vectors = np.zeros((N_LAYERS, cap, DIM), np.float32)  # layer-major: rows of a layer are contiguous
        self._norm2 = np.zeros((N_LAYERS, cap), np.float32)  # per-layer squared norms, layer-major
        self._identity = np.zeros(cap, np.int32)
        self._camera = np.zeros(cap, np.int32)
        self._t0 = np.zeros(cap, np.float64)
        self._t1 = np.zeros(cap, np.float64)
        self._pos: dict[int, int] = {}
        self._identities = _Codes()
        self._cameras = _Codes()

    # -- mutation ---------------------------------------------------------------------------------
    _COLUMNS = ("_ids", "_identity", "_camera", "_t0", "_t1")  # (cap,) each
    _LAYER_MAJOR = ("_norm2", "_vectors")  # (18, cap) and (18, cap, 512)

    def add(self, ids: np.ndarray, latents: np.ndarray, attrs: Sequence[KeyAttrs]) -> None:
        ids = np.asarray(ids, np.int64)
        m = len(ids)  # latents: (m, 18, 512) float32
        if latents.shape != (m, N_LAYERS, DIM) or len(attrs) != m:
            raise InvalidArgument("add: ids, latents and attrs disagree in length or shape")
        with self._write_mutex:  # not the search lock: see the class docstring
            dup = [int(i) for i in ids if int(i) in self._pos]
            if dup:
                raise InvalidArgument(f"add: key ids already indexed: {dup[:5]}")
            n = self._n
            self._grow(n + m, n)
            s = slice(n, n + m)
            self._vectors[:, s] = latents.transpose(1, 0, 2)
            self._ids[s] = ids
            self._norm2[:, s] = np.einsum("nld,nld->ln", latents, latents)
            self._identity[s] = [self._identities.code(a.identity_id) for a in attrs]
            self._camera[s] = [self._cameras.code(a.camera_id) for a in attrs]
            self._t0[s] = [a.t_start for a in attrs]
            self._t1[s] = [a.t_end for a in attrs]
            for j, key_id in enumerate(ids):
                self._pos[int(key_id)] = n + j
            self._n = n + m  # publish: searches starting from here see the new rows

    def remove(self, ids: np.ndarray) -> int:
        with self._write_mutex, self._lock.write():  # compaction moves rows that running searches may read
            positions = np.array(sorted({self._pos[int(i)] for i in ids if int(i) in self._pos}), np.int64)
            if len(positions) == 0:
                return 0
            keep = np.ones(self._n, bool)
            keep[positions] = False
            new_n = int(keep.sum())
            for name in self._COLUMNS:  # order-preserving compaction
                col = getattr(self, name)
                col[:new_n] = col[: self._n][keep]
            for name in self._LAYER_MAJOR:
                arr = getattr(self, name)
                for layer in range(N_LAYERS):
                    arr[layer, :new_n] = arr[layer, : self._n][keep]
            self._n = new_n
            self._pos = {int(k): p for p, k in enumerate(self._ids[:new_n])}
            return len(positions)

    # -- queries ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __contains__(self, key_id: int) -> bool:
        return int(key_id) in self._pos

    @property
    def nbytes(self) -> int:
        per_row = N_LAYERS * DIM * 4 + N_LAYERS * 4 + sum(getattr(self, c)[:1].nbytes for c in self._COLUMNS)
        return self._n * per_row

    def _layer(self, layer: int, n: int) -> np.ndarray:
        """Zero-copy (n, 512) C-contiguous view of a layer's first n stored vectors (valid while the read lock is
        held)."""
        return self._vectors[layer, :n]

    def _admitted(self, flt: Filter, n: int) -> np.ndarray | None:
        """Boolean mask (n,) of the first n rows the filter admits, or None for all rows."""
        if flt.empty:
            return None
        return self._restrict(np.ones(n, bool), flt, n)

    def search(
        self, probes: np.ndarray, layers: tuple[int, ...], metric: str, k: int, flt: Filter
    ) -> SearchResult:
        q_all = select_layers(probes, layers)  # (Q, |S|, 512)
        nq = len(probes)
        require_cosine_defined(q_all, metric)
        with self._lock.read():
            n = self._n
            mask = self._admitted(flt, n)
            searched = n if mask is None else int(mask.sum())
            if searched == 0:
                empty = np.zeros((nq, 0))
                return SearchResult(empty.astype(np.int64), empty, 0)
            views = [self._layer(layer, n) for layer in layers]
            kk = min(searched, k + self._rerank_extra)
            if nq == 1 and _f16dot is not None and (mask is None or searched >= GATHER_BELOW * n):
                return self._search_one(views, q_all[0], layers, metric, k, kk, n, mask, searched)
            cand = self._scan(views, q_all, layers, metric, kk, n, mask, searched)  # (Q, kk) rows
            return self._rerank(views, q_all, metric, k, cand, searched)

    def _blocks(self, n: int, mask: np.ndarray | None, searched: int):
        """Row blocks to score, of equal size, one per scan thread or more (at most SCAN_CHUNK rows each):
        (rows, valid) where rows is a slice (no copy) or an index array, and valid masks excluded rows (None:
        all valid)."""
        if mask is not None and searched < GATHER_BELOW * n:
            rows = np.flatnonzero(mask)
            step = min(SCAN_CHUNK, -(-len(rows) // self._threads))
            return [(rows[s : s + step], None) for s in range(0, len(rows), step)]
        step = min(SCAN_CHUNK, -(-n // self._threads))
        return [(slice(s, min(n, s + step)), None if mask is None else mask[s : min(n, s + step)])
                for s in range(0, n, step)]

    def _scan(self, views, q_all, layers, metric, kk, n, mask, searched) -> np.ndarray:
        """Approximate-order candidates (Q, kk) by row number: the best kk of every block, merged."""
        gather = mask is not None and searched < GATHER_BELOW * n
        if len(q_all) == 1 and not gather:
            return self._scan_one(views, q_all[0], layers, metric, kk, n, mask)
        qs = [np.ascontiguousarray(q_all[:, j, :].T) for j in range(len(layers))]  # (512, Q) each
        norm2 = [self._norm2[layer] for layer in layers]  # (n,) views, one per selected layer

        def block(job):  # runs in a scan thread; numpy releases the GIL in the products
            rows, valid = job
            if len(q_all) == 1:  # gathered rows of one probe
                ip = sum(q.T @ view[rows].T for view, q in zip(views, qs))  # (1, rows)
            else:
                ip = None
                for view, q in zip(views, qs):
                    part = view[rows] @ q  # (rows, Q): BLAS' fastest layout here
                    ip = part if ip is None else np.add(ip, part, out=ip)
                ip = np.ascontiguousarray(ip.T)  # (Q, rows), once per block
            cost = _costs(ip, norm2, rows, metric)
            if valid is not None:
                cost[:, ~valid] = np.inf
            if isinstance(rows, slice):
                found, best = smallest_k(cost, kk, first=rows.start)  # (Q, kk') row numbers, -1 where fewer
            else:
                pos, best = smallest_k(cost, kk)  # positions in the gathered block
                found = np.where(pos >= 0, rows[pos], -1)
            return found, np.where(found >= 0, best, np.inf)

        jobs = self._blocks(n, mask, searched)
        parts = list(self._pool.map(block, jobs)) if len(jobs) > 1 else [block(jobs[0])]
        best_rows = np.concatenate([r for r, _ in parts], axis=1)
        best_cost = np.concatenate([c for _, c in parts], axis=1)
        if best_rows.shape[1] > kk:
            keep = np.argpartition(best_cost, kk - 1, axis=1)[:, :kk]
            best_rows = np.take_along_axis(best_rows, keep, 1)
            best_cost = np.take_along_axis(best_cost, keep, 1)
        # drop masked-out rows that filled the list when fewer than kk rows were admitted
        return np.where(np.isfinite(best_cost), best_rows, -1)

    def _scan_one(self, views, q, layers, metric, kk, n, mask) -> np.ndarray:
        """One probe q (|S|, 512) over all rows without the C kernel (with it: `_search_one`): the scan threads (this
        one included) each fill their equal share of one cost vector (`_costs_one`), then this thread selects once.
        (Selecting per thread through numpy/FAISS and merging took ~0.4 ms more at 10k keys: thread hand-offs and
        the GIL, against a 0.3 ms read.)"""
        q = np.ascontiguousarray(q)
        norm2 = [self._norm2[layer] for layer in layers]  # (cap,) views, one per selected layer
        cost = np.empty((1, n), np.float32)
        jobs = self._one_probe_jobs(n, len(layers) * DIM * 4)
        step = -(-n // jobs)
        shares = [slice(s, min(n, s + step)) for s in range(0, n, step)]
        pending = [self._pool.submit(_costs_one, cost[0, r], views, q, r, norm2, metric) for r in shares[1:]]
        _costs_one(cost[0, shares[0]], views, q, shares[0], norm2, metric)
        for f in pending:
            f.result()
        if mask is not None:
            cost[:, ~mask] = np.inf
        found, best = smallest_k(cost, kk)
        return np.where(np.isfinite(best), found, -1)

    def _search_one(self, views, q, layers, metric, k, kk, n, mask, searched) -> SearchResult:
        """One probe q (|S|, 512) over all rows with the C kernel: each scan thread (this one included) takes the kk
        best rows of its share in one pass (`_f16dot.top`: products, costs and a bounded heap as the rows stream
        by; no cost vector is written and re-read), then one call (`_f16dot.rank`) keeps the kk best of all
        shares, re-scores them in float64 and orders them by (score, key id). Between the read and the reply this
        leaves a few small numpy steps, each slow just after a scan has evicted the caches (the numpy selection,
        re-rank and ordering it replaces took ~0.1 ms more at 10k keys x 1 layer, a 0.45 ms read)."""
        q = np.ascontiguousarray(q, np.float32)
        norm2 = [self._norm2[layer] for layer in layers]  # (cap,) views, one per selected layer
        row_bytes = len(layers) * DIM * 4
        jobs = self._one_probe_jobs(n, row_bytes)
        first = min(n, (n + (jobs - 1) * (WAKE_BYTES // row_bytes)) // jobs)  # the caller's share: see WAKE_BYTES
        cuts = [0, *(first + (n - first) * i // max(1, jobs - 1) for i in range(jobs - 1)), n]
        pos = np.full(jobs * kk, -1, np.int64)  # per share, its best rows (-1: none) and their costs
        vals = np.empty(jobs * kk, np.float32)
        shares = [(pos[i * kk : (i + 1) * kk], vals[i * kk : (i + 1) * kk], cuts[i], cuts[i + 1])
                  for i in range(jobs)]
        pending = [self._pool.submit(_f16dot.top, q, views, norm2, metric, *share, mask) for share in shares[1:]]
        _f16dot.top(q, views, norm2, metric, *shares[0], mask)
        for f in pending:
            f.result()
        kout = min(k, searched)
        ids = np.full((1, kout), -1, np.int64)
        scores = np.zeros((1, kout), np.float64)
        _f16dot.rank(q, views, metric, pos, vals, kk, self._ids, ids[0], scores[0])
        return SearchResult(ids, scores, searched)

    def _one_probe_jobs(self, n: int, row_bytes: int) -> int:
        """Scan threads for one probe over n rows: one per core, while each reads at least MIN_JOB_BYTES."""
        return max(1, min(self._threads, n // -(-MIN_JOB_BYTES // row_bytes)))

    def _rerank(self, views, q_all, metric, k, cand, searched) -> SearchResult:
        nq = len(q_all)
        kout = min(k, searched)
        ids = np.full((nq, kout), -1, np.int64)
        scores = np.zeros((nq, kout), np.float64)
        for i in range(nq):
            rows = cand[i][cand[i] >= 0]  # distinct: every block contributes its own rows
            s = exact_scores(q_all[i], views, rows, metric)
            write_ranked(ids[i], scores[i], self._ids[rows], s, metric)
        return SearchResult(ids, scores, searched)


def write_ranked(ids: np.ndarray, scores: np.ndarray, key_ids: np.ndarray, s: np.ndarray, metric: str) -> np.ndarray:
    """One probe's output row (ids, scores: (k,)) <- the k best of the scored keys, best first, ties by key id
    (the order every index and Match return). Returns the positions in key_ids / s written."""
    order = np.lexsort((key_ids, -s if metric == "cosine" else s))[: len(ids)]
    ids[: len(order)] = key_ids[order]
    scores[: len(order)] = s[order]
    return order


def _costs(ip: np.ndarray, norm2: Sequence[np.ndarray], rows, metric: str) -> np.ndarray:
    """Costs (smaller is better), in place of `ip` (Q, m) float32, of the given rows: l2 = ||x||^2 - 2<q, x>
    (+ ||q||^2, constant per probe); cosine = -<q, x> / ||x|| (/ ||q||, constant per probe), 0 for zero-norm
    keys. norm2: per selected layer, the (n,) squared norms."""
    xn2 = norm2[0][rows].copy()  # (m,)
    for col in norm2[1:]:
        xn2 += col[rows]
    if metric == "l2":
        return np.subtract(xn2, np.multiply(ip, 2.0, out=ip), out=ip)
    np.sqrt(xn2, out=xn2)
    np.divide(ip, xn2, out=ip, where=xn2 > 0)  # a zero-norm key has <q, x> = 0: it keeps 0
    return np.negative(ip, out=ip)


def _costs_one(out: np.ndarray, views: Sequence[np.ndarray], q: np.ndarray, rows: slice,
               norm2: Sequence[np.ndarray], metric: str) -> None:
    """out (m,) float32 = the costs (`_costs`) of rows `rows` for one probe: the C kernel reads every selected
    layer in one pass and forms the costs as it goes; else FAISS' SIMD dot per layer, then `_costs`.

    views: (n, 512) C-contiguous float32 per selected layer; q: (|S|, 512) float32."""
    if _f16dot is not None:
        _f16dot.dot(out, q, views, rows.start, rows.stop, norms=norm2, metric=metric)
        return
    m = rows.stop - rows.start
    tmp = np.empty(m, np.float32) if len(views) > 1 else out
    for j, view in enumerate(views):
        dst = out if j == 0 else tmp
        faiss.fvec_inner_products_ny(faiss.swig_ptr(dst), faiss.swig_ptr(q[j]), faiss.swig_ptr(view[rows]), DIM, m)
        if j:
            out += tmp
    _costs(out[None], norm2, rows, metric)


def smallest_k(cost: np.ndarray, k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions (+ `first`) and values of the k smallest entries of each row of `cost` (Q, m) float32,
    best first.

    FAISS' heap selection: ~40 us for 50k values where numpy's argpartition takes ~0.9 ms here; one row goes to
    the C kernel's heap (`_f16dot.smallest`: one call, no SWIG objects). +inf and NaN entries are never
    selected; rows with fewer selectable entries pad with position -1 (their values mean nothing)."""
    cost = np.ascontiguousarray(cost, np.float32)
    nq, m = cost.shape
    k = min(k, m)
    if nq == 1 and _f16dot is not None:
        vals = np.full((1, k), np.inf, np.float32)
        pos = np.full((1, k), -1, np.int64)
        got = _f16dot.smallest(cost[0], pos[0], vals[0])
        pos[0, :got] += first
        return pos, vals
    vals = np.empty((nq, k), np.float32)
    pos = np.empty((nq, k), np.int64)
    heap = faiss.float_maxheap_array_t()
    heap.nh, heap.k = nq, k
    heap.val, heap.ids = faiss.swig_ptr(vals), faiss.swig_ptr(pos)
    heap.heapify()
    heap.addn(m, faiss.swig_ptr(cost), first, 0, nq)
    heap.reorder()
    return pos, vals
