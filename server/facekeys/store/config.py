"""Engine settings. Frozen, validated on construction: a bad setting fails at start-up, not mid-request."""

from __future__ import annotations

import math
from dataclasses import dataclass

from facekeys.errors import InvalidArgument
from facekeys.layers import parse_layers

GiB = 1 << 30
PQ_MS = (16, 32, 64, 128)  # sub-quantisers per layer a 4-bit PQ may have (512 dims: 32, 16, 8, 4 dims each)


def parse_group(spec: str, default_m: int) -> tuple[tuple[int, ...], int]:
    """An `ann_groups` entry, "layers" or "layers/m" (layers as in Match: "1-4", "high:8", "9,10"), -> (0-based
    layers, m sub-quantisers per layer). FAISS fast-scan accumulates in 16 bits: at most 512 per index."""
    layers, _, m = str(spec).partition("/")
    try:
        m = int(m) if m else default_m
    except ValueError:
        raise InvalidArgument(f"ann_groups: {spec!r}: m after '/' must be one of {PQ_MS}") from None
    if m not in PQ_MS:
        raise InvalidArgument(f"ann_groups: {spec!r}: m must be one of {PQ_MS}, got {m}")
    layers = tuple(parse_layers(layers))
    if not 2 <= len(layers) <= 512 // m:
        raise InvalidArgument(f"ann_groups: {spec!r} must hold 2..{512 // m} layers at {m} sub-quantisers per layer "
                              "(FAISS fast-scan accumulates in 16 bits: at most 512 sub-quantisers per index)")
    return layers, m


@dataclass(frozen=True)
class StoreConfig:
    map_size: int = 64 * GiB  # LMDB map size in bytes (sparse: disk is used as keys arrive); ~37 KB per key
    durable: bool = True  # fsync every commit; an Enroll is acknowledged only after it is on disk
    index_mode: str = "exact"  # "exact": scan every key (flat per-layer rows); "ann": compressed per-layer candidates
    #                            + exact re-rank from float16 vectors (store/ann.py); both return exact scores
    vector_dtype: str = "float32"  # exact mode only: "float32" (in RAM) or "float16" (memory-mapped files, half
    #                                the bytes per scan; ann always keeps float16)
    # Default accept thresholds for layers 1-4, from the open-set calibration at FAR <= 1e-3 on the SYNTHETIC
    # workload (benchmarks/RESULTS.md). Recalibrate on real keys with `facekeys bench recall`.
    cosine_threshold: float = 0.864  # accept if cosine >= this
    l2_threshold: float = 26.06  # accept if L2 distance <= this
    max_top_k: int = 1000  # largest top_k a request may ask for
    max_probes: int = 1024  # largest probe batch in one Match
    max_batch: int = 4096  # largest number of keys in one Enroll
    rebuild_batch: int = 4096  # keys read from LMDB per index add at start-up
    rerank_extra: int = 16  # candidates beyond top_k re-scored in float64 before the final order (float16 modes:
    #                         those within float16's error bound of the k-th are read again from the float32 keys)
    # -- ann mode (defaults measured in benchmarks/RESULTS.md) --
    ann_pq_m: int = 64  # 4-bit PQ sub-quantisers per layer (single layers and groups without "/m"): m/2 bytes per
    #                     key and layer (64 -> 32 B, 8 dims each)
    ann_groups: tuple = ("high:4", "high:6/32", "high:8/32", "high:16/32", "9-16/32", "low:4", "low:2")
    #                     layer groups with a concatenated-code index, "layers" or "layers/m" (m sub-quantisers
    #                     per layer, default ann_pq_m; at most 512 per index); a subset is served by a group of
    #                     exactly its layers if one is listed (the finest), else by the groups covering it at the
    #                     fewest code bytes, every single layer being a group too. Large groups
    #                     use 32 per layer: half the bytes per scan at nearly the same recall (benchmarks/RESULTS.md
    #                     section 2); a group coarser than ann_pq_m serves only 5+ of a subset's layers
    ann_backend: str = "auto"  # candidate generator: "pq" (CPU PQ fast-scan group indexes; their k-means on the GPU
    #                            when FAISS sees one), "flat" (exact float16 inner products of all 18 layers + norm
    #                            columns, store/flat.py: on the GPU when FAISS sees one, else a slow CPU reference),
    #                            "auto" = "flat" when FAISS sees a GPU, else "pq" (CPU stays the default)
    ann_candidates: int = 0  # candidates per group-index shard (flat: per segment); 0 = sized from N and the subset
    #                          (default_candidates in store/ann.py; flat: 256)
    ann_refine_m: int = 128  # pq: 4-bit PQ sub-quantisers per layer of the refine codes (m/2 B per key and layer, in
    #                          RAM: 64 B at 128, 1.15 KB per key for 18 layers): every fast-scan candidate is scored
    #                          with them over the whole subset and only the best `ann_refine` are re-ranked exactly
    #                          from the float16 vectors; 0 = no refine step (the candidates go to the re-rank)
    ann_refine: int = 0  # candidates per probe kept by the refine step; 0 = sized from N (refine_keep in ann.py)
    ann_rerank_bytes: int = 32 << 20  # float16 bytes the exact re-rank of one probe may read (caps the default)
    ann_max_candidates: int = 16_384  # per-request limit on candidates
    ann_train_sample: int = 65_536  # keys sampled to train the per-layer means and PQs; the PQ is trained again
    #                                 each time the store doubles until a training saw this many
    ann_train_min: int = 8192  # keys before the first training; fewer are served by the exact buffer alone
    ann_merge_rows: int = 16_384  # buffered (exact-scanned) keys that trigger a background merge
    ann_merge_idle_s: float = 2.0  # ... or this long without enrolments, whatever the buffer size
    ann_max_segments: int = 3  # more segments than this are compacted in the background (each search visits all)
    ann_exact_bytes: int = 64 << 20  # filters admitting fewer float16 bytes than this are answered by an exact scan
    ann_threads: int = 2  # threads per search (shards in parallel) and per exact scan
    snapshot_interval_s: float = 300.0  # ann/float16 indexes snapshot at most this often (and at close)

    def __post_init__(self):
        if self.map_size < 1 << 20:
            raise InvalidArgument(f"map_size {self.map_size} is below 1 MiB")
        if self.index_mode not in ("exact", "ann"):
            raise InvalidArgument(f"index_mode {self.index_mode!r} is not one of: exact, ann")
        if self.vector_dtype not in ("float32", "float16"):
            raise InvalidArgument(f"vector_dtype {self.vector_dtype!r} is not one of: float32, float16")
        if self.ann_backend not in ("auto", "pq", "flat"):
            raise InvalidArgument(f"ann_backend {self.ann_backend!r} is not one of: auto, pq, flat")
        if self.ann_refine_m not in (0,) + PQ_MS:
            raise InvalidArgument(f"ann_refine_m must be 0 (no refine step) or one of {PQ_MS}, got {self.ann_refine_m}")
        if not 0 <= self.ann_refine <= self.ann_max_candidates:
            raise InvalidArgument("ann_refine must be in 0..ann_max_candidates (0 = sized from the number of keys)")
        if self.ann_pq_m not in PQ_MS:
            raise InvalidArgument(f"ann_pq_m must be one of {PQ_MS}, got {self.ann_pq_m}")
        for g in self.ann_groups:
            parse_group(g, self.ann_pq_m)
        for name in ("ann_max_candidates", "ann_train_min", "ann_merge_rows", "ann_max_segments", "ann_threads",
                     "ann_train_sample", "ann_rerank_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1")
        if not 0 <= self.ann_candidates <= self.ann_max_candidates:
            raise InvalidArgument("ann_candidates must be in 0..ann_max_candidates (0 = sized from the number of keys)")
        if self.ann_train_min < 1024 or self.ann_train_sample < 1024:
            raise InvalidArgument("ann_train_min and ann_train_sample must be >= 1024 (PQ training needs samples)")
        for name in ("ann_merge_idle_s", "snapshot_interval_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InvalidArgument(f"{name} must be a finite number >= 0")
        if self.ann_exact_bytes < 0:
            raise InvalidArgument("ann_exact_bytes must be >= 0")
        for name in ("cosine_threshold", "l2_threshold"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidArgument(f"{name} must be finite")
        if not -1.0 <= self.cosine_threshold <= 1.0:
            raise InvalidArgument("cosine_threshold must be in [-1, 1]")
        if self.l2_threshold < 0:
            raise InvalidArgument("l2_threshold must be >= 0")
        for name in ("max_top_k", "max_probes", "max_batch", "rebuild_batch"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1")
        if self.rerank_extra < 0:
            raise InvalidArgument("rerank_extra must be >= 0")

    def threshold(self, metric: str) -> float:
        return self.cosine_threshold if metric == "cosine" else self.l2_threshold
