"""Engine settings. Frozen, validated on construction: a bad setting fails at start-up, not mid-request."""

from __future__ import annotations

import math
from dataclasses import dataclass

from facekeys.errors import InvalidArgument

GiB = 1 << 30


@dataclass(frozen=True)
class StoreConfig:
    map_size: int = 64 * GiB  # LMDB map size in bytes (sparse: disk is used as keys arrive); ~37 KB per key
    durable: bool = True  # fsync every commit; an Enroll is acknowledged only after it is on disk
    index_mode: str = "exact"  # "exact": per-layer flat FAISS indexes, exact scores
    # Default accept thresholds for layers 1-4, from the open-set calibration at FAR <= 1e-3 on the SYNTHETIC
    # workload (benchmarks/RESULTS-recall.md). Recalibrate on real keys with `facekeys bench recall`.
    cosine_threshold: float = 0.86  # accept if cosine >= this
    l2_threshold: float = 26.0  # accept if L2 distance <= this
    max_top_k: int = 1000  # largest top_k a request may ask for
    max_probes: int = 1024  # largest probe batch in one Match
    max_batch: int = 4096  # largest number of keys in one Enroll
    rebuild_batch: int = 4096  # keys read from LMDB per index add at start-up
    rerank_extra: int = 16  # candidates beyond top_k re-scored in float64 before the final order

    def __post_init__(self):
        if self.map_size < 1 << 20:
            raise InvalidArgument(f"map_size {self.map_size} is below 1 MiB")
        if self.index_mode not in ("exact",):
            raise InvalidArgument(f"index_mode {self.index_mode!r} is not one of: exact")
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
