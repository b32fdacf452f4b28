"""The key-store engine: per-layer vector indexes over W+ latents, with LMDB as the source of truth."""

from .config import StoreConfig
from .keystore import KeyStore
from facekeys.records import (
    EnrolledKey, Filter, Hit, KeyRecord, MatchQuery, MatchResult, NewKey, Obfuscation, ProbeResult,
    StoreStats, Where,
)
from .vectors import FlatLayerIndex, KeyAttrs, SearchResult, VectorIndex

__all__ = [
    "KeyStore", "StoreConfig", "NewKey", "Where", "Obfuscation", "Filter", "MatchQuery", "MatchResult",
    "ProbeResult", "Hit", "KeyRecord", "EnrolledKey", "StoreStats", "VectorIndex", "FlatLayerIndex",
    "KeyAttrs", "SearchResult",
]
