"""KeyStore: the engine. LMDB is the source of truth; per-encoder vector indexes are rebuilt from it.

No grpc, no torch, no protobuf: the server, the indexer and the benchmarks all call this directly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from facekeys.errors import FailedPrecondition, InvalidArgument, NotFound
from facekeys.limits import MAX_ATTRIBUTE_KEY_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_ATTRIBUTES, quote

from .config import StoreConfig
from .lmdb_table import LmdbTable, StoredMeta, ValueCipher
from facekeys.records import (
    METRICS, EnrolledKey, Hit, KeyRecord, MatchQuery, MatchResult, NewKey, ProbeResult, StoreStats,
    better, check_id, check_latents,
)
from .ann import AnnFactory, AnnLayerIndex, resolve_backend
from .vectors import FlatLayerIndex, KeyAttrs, SearchResult, VectorIndex, exact_scores, write_ranked

log = logging.getLogger("facekeys.store")

IndexFactory = Callable[[StoreConfig], VectorIndex]


class LatentTransform(Protocol):
    """A metric-preserving transform of keys (facekeys.security.transform.KeyTransform)."""

    fingerprint: str

    def forward(self, latents: np.ndarray) -> np.ndarray: ...  # (N, 18, 512) -> (N, 18, 512)

    def inverse(self, latents: np.ndarray) -> np.ndarray: ...


def flat_index(config: StoreConfig) -> VectorIndex:
    return FlatLayerIndex(rerank_extra=config.rerank_extra)


def _attrs(m: StoredMeta) -> KeyAttrs:
    return KeyAttrs(m.identity_id, m.camera_id, m.t_start, m.t_end)


class KeyStore:
    """Face keys: enrol, match over W+ layer subsets, get, delete, list, stats.

    Thread-safe: matches run concurrently; enrolments and deletions are serialised (LMDB has one
    writer anyway) so that LMDB and the indexes never disagree.
    """

    def __init__(self, table: LmdbTable, config: StoreConfig, index_factory: IndexFactory = flat_index):
        self.config = config
        self._table = table
        self._new_index = index_factory
        self._indexes: dict[str, VectorIndex] = {}  # encoder_id -> index
        self._identity_keys: Counter[str] = Counter()
        self._write_lock = threading.Lock()
        self._closed = False
        self._transform: Optional[LatentTransform] = None

    @classmethod
    def open(cls, path: str | Path, config: Optional[StoreConfig] = None,
             index_factory: Optional[IndexFactory] = None, *, cipher: Optional[ValueCipher] = None,
             transform: Optional[LatentTransform] = None,
             previous_transform: Optional[LatentTransform] = None) -> "KeyStore":
        """Open (or create) a store directory and rebuild the indexes from LMDB.

        `cipher` encrypts values at rest; `transform` is the deployment's key transform, applied to every
        stored key and every probe; `previous_transform` resumes an interrupted `rotate_transform`.
        """
        config = config or StoreConfig()
        float32 = config.index_mode == "exact" and config.vector_dtype == "float32"
        if cipher is not None and not float32:
            raise FailedPrecondition(
                "encryption at rest does not yet cover the float16 vector files and index snapshots of "
                f"index_mode={config.index_mode!r}, vector_dtype={config.vector_dtype!r}: with a master key use "
                "index_mode='exact', vector_dtype='float32' (vectors only in RAM, nothing but LMDB on disk)")
        if index_factory is None:  # exact float32 in RAM; float16 files + snapshots for exact-f16 and ann
            index_factory = flat_index if float32 else AnnFactory(config, Path(path) / "indexes")
        table = LmdbTable(Path(path), config.map_size, config.durable, cipher)
        store = cls(table, config, index_factory)
        store._transform = transform
        try:
            store._resume_rotation(previous_transform)
            table.check_marker("transform", _fingerprint(transform))
            store._rebuild()
        except BaseException:
            table.close()
            raise
        return store

    def _rebuild(self) -> None:
        t0 = time.perf_counter()
        if isinstance(self._new_index, AnnFactory):  # snapshots checked against LMDB, rebuilt where they disagree
            self._indexes, counts = self._new_index.restore(self._table)
            self._identity_keys.update(counts)
            log.info("opened indexes from snapshots/LMDB: %d keys, %d encoders in %.2fs",
                     sum(len(ix) for ix in self._indexes.values()), len(self._indexes), time.perf_counter() - t0)
            return
        n = 0
        for metas, latents in self._table.scan(self.config.rebuild_batch):  # latents (B, 18, 512)
            self._index_add(metas, latents)
            n += len(metas)
        log.info("rebuilt indexes from LMDB: %d keys, %d encoders in %.2fs", n, len(self._indexes),
                 time.perf_counter() - t0)

    def _index_add(self, metas: Sequence[StoredMeta], latents: np.ndarray) -> None:
        by_encoder: dict[str, list[int]] = {}
        for j, m in enumerate(metas):
            by_encoder.setdefault(m.encoder_id, []).append(j)
            self._identity_keys[m.identity_id] += 1
        for encoder_id, rows in by_encoder.items():
            index = self._indexes.get(encoder_id)
            if index is None:
                index = self._indexes[encoder_id] = self._new_index(self.config)
            index.add(np.array([metas[j].key_id for j in rows], np.int64), latents[rows],
                      [_attrs(metas[j]) for j in rows])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for index in self._indexes.values():  # snapshot hook: ann/float16 indexes write a final snapshot
                closer = getattr(index, "close", None)
                if closer is not None:
                    closer()
            self._table.close()

    def get_setting(self, name: str) -> Optional[bytes]:
        """A small value another component keeps in this store's LMDB (the audit log's anchor)."""
        return self._table.get_setting(name)

    def put_setting(self, name: str, value: bytes) -> None:
        """Replace a setting in one durable LMDB commit."""
        self._table.put_setting(name, value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- enrol ------------------------------------------------------------------------------------
    def enroll(self, keys: Sequence[NewKey]) -> list[EnrolledKey]:
        """Store keys durably, then index them. All or nothing: a bad key rejects the whole batch."""
        if len(keys) == 0:
            raise InvalidArgument("enroll: no keys given")
        if len(keys) > self.config.max_batch:
            raise InvalidArgument(f"enroll: {len(keys)} keys in one batch, the limit is {self.config.max_batch}")
        checked, identities = [], []
        for i, key in enumerate(keys):
            try:
                checked.append(NewKey(
                    latent=check_latents(key.latent), encoder_id=check_id(key.encoder_id, "encoder_id", required=True),
                    identity_id=check_id(key.identity_id, "identity_id", required=False),
                    where=key.where.checked(), obfuscation=key.obfuscation.checked(),
                    attributes=_check_attributes(key.attributes),
                ))
            except InvalidArgument as e:
                raise InvalidArgument(f"key {i}: {e}") from None
            identities.append(key.identity_id or uuid.uuid4().hex)
        latents = np.stack([k.latent for k in checked])  # (N, 18, 512)
        if self._transform is not None:
            latents = self._transform.forward(latents)
            checked = [dataclasses.replace(k, latent=x) for k, x in zip(checked, latents)]
        with self._write_lock:
            metas = self._table.put(checked, identities)  # durable from here on
            self._index_add(metas, latents)
        return [EnrolledKey(m.key_id, m.identity_id) for m in metas]

    # -- match ------------------------------------------------------------------------------------
    def match(self, query: MatchQuery) -> MatchResult:
        cfg = self.config
        check_id(query.encoder_id, "encoder_id", required=True)
        if query.metric not in METRICS:
            raise InvalidArgument(f"unknown metric {quote(query.metric)}; use one of {', '.join(METRICS)}")
        if not isinstance(query.top_k, int) or not 1 <= query.top_k <= cfg.max_top_k:
            raise InvalidArgument(f"top_k must be in 1..{cfg.max_top_k}, got {query.top_k}")
        if not query.layers:
            raise InvalidArgument("layer subset is empty")
        n = query.ann_candidates  # checked in every mode, so a request valid here is valid on an ann store too
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= cfg.ann_max_candidates:
            raise InvalidArgument(
                f"ann_candidates must be in 0..{cfg.ann_max_candidates} (0 = the store's default), got {n!r}")
        if not isinstance(query.exact, (bool, np.bool_)):
            raise InvalidArgument(f"exact must be true or false, got {query.exact!r}")
        probes = check_latents(query.probes, "probe", batch=True)  # (Q, 18, 512)
        if len(probes) > cfg.max_probes:
            raise InvalidArgument(f"{len(probes)} probes in one match, the limit is {cfg.max_probes}")
        if self._transform is not None:
            probes = self._transform.forward(probes)
        threshold = cfg.threshold(query.metric) if query.threshold is None else float(query.threshold)
        if not math.isfinite(threshold):
            raise InvalidArgument("threshold must be finite")
        flt = query.filter.checked()  # ids' lengths and count, finite times, range not reversed
        index = self._indexes.get(query.encoder_id)
        if index is None:
            names = sorted(self._indexes)
            known = ", ".join(quote(e) for e in names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            raise NotFound(f"no keys were ever enrolled with encoder_id {quote(query.encoder_id)} "
                           f"(known: {known or 'none'})")
        # ann options go to ann indexes only: exact indexes (float32, float16) always scan every admitted key
        opts = query.index_options() if _is_ann(index) else {}
        float16 = isinstance(index, AnnLayerIndex)  # ann and exact float16: re-scored from the float32 keys
        k = query.top_k + (cfg.rerank_extra if float16 else 0)
        found = index.search(probes, query.layers, query.metric, k, flt, **opts)
        if float16:
            found = self._rescore_float32(found, probes, query.layers, query.metric, query.top_k)
        metas = self._table.get_meta(sorted({int(i) for i in found.ids.ravel() if i >= 0}))
        results = []
        for ids, scores in zip(found.ids, found.scores):
            hits = tuple(
                _hit(metas[int(i)], float(s)) for i, s in zip(ids, scores) if int(i) in metas
            )  # a key deleted while this match ran is dropped
            accepted = bool(hits) and better(query.metric, hits[0].score, threshold)
            results.append(ProbeResult(accepted, hits))
        return MatchResult(tuple(results), query.layers, query.metric, threshold, found.searched)

    def _rescore_float32(self, found: SearchResult, probes: np.ndarray, layers: tuple[int, ...], metric: str,
                         k: int) -> SearchResult:
        """The float16 index's best k + rerank_extra per probe cut to k, ordered by (score, key id) as the enrolled
        float32 values rank them and with their float32 scores (as in the float32 exact mode): float16 storage
        cannot reorder near-ties. Only keys that can be in that answer are read from LMDB (at 1M keys mostly from
        the disk). First the best k by float16 score and the hits likely to come within the error bounds
        (`ann.f16_error_bounds`) of the k-th (`_first_reads`); then any hit whose float16 score plus its bound
        still reaches the k-th best float32 score read (`_unsettled`; rarely any): every other hit is strictly
        worse in float32 than k read ones, so it cannot rank among the k."""
        hits = [(ids[ids >= 0], s16[ids >= 0], b[ids >= 0])
                for ids, s16, b in zip(found.ids, found.scores, _bounds_of(found))]  # per probe, best first
        q_all = np.ascontiguousarray(probes[:, list(layers)], np.float32)  # (Q, |S|, 512)
        scored: list[dict[int, float]] = [{} for _ in hits]  # per probe, {key id: float32 score} of the hits read
        tried: set[int] = set()  # asked of LMDB; a key deleted meanwhile is absent from `values`
        values: dict[int, np.ndarray] = {}  # {key id: (|S|, 512) float32}, every round's (other probes score them too)
        want = [_first_reads(h, k, metric) for h in hits]
        while any(want):
            new = sorted({j for w in want for j in w} - tried)
            values.update(self._table.get_latents(new, layers))
            tried.update(new)
            for i, w in enumerate(want):
                key_ids = np.array([j for j in w if j in values], np.int64)
                if len(key_ids):
                    x = np.stack([values[int(j)] for j in key_ids])  # (m, |S|, 512)
                    views = [np.ascontiguousarray(x[:, j, :]) for j in range(x.shape[1])]
                    scored[i].update(zip(key_ids.tolist(), exact_scores(q_all[i], views, np.arange(len(x)), metric)))
            gone = tried - values.keys()
            want = [_unsettled(h, sc, gone, k, metric) for h, sc in zip(hits, scored)]
        kout = min(k, found.ids.shape[1])
        ids = np.full((len(probes), kout), -1, np.int64)
        scores = np.zeros((len(probes), kout), np.float64)
        for i, sc in enumerate(scored):
            if sc:
                write_ranked(ids[i], scores[i], np.array(list(sc), np.int64), np.array(list(sc.values())), metric)
        return SearchResult(ids, scores, found.searched)

    # -- get / delete / list / stats ---------------------------------------------------------------
    def get(self, key_id: int, include_latent: bool = False) -> KeyRecord:
        return self._table.get(_check_key_id(key_id), include_latent)

    def delete_key(self, key_id: int) -> list[int]:
        return self._delete([_check_key_id(key_id)], f"key {key_id} not found")

    def delete_identity(self, identity_id: str) -> list[int]:
        check_id(identity_id, "identity_id", required=True)
        with self._write_lock:
            ids = self._table.keys_of_identity(identity_id)
            deleted = self._delete_locked(ids, f"identity {quote(identity_id)} not found")
            self._table.forget_identity(identity_id)  # crypto-shred: old bytes anywhere stop decrypting
            return deleted

    def _delete(self, ids: list[int], missing: str) -> list[int]:
        with self._write_lock:
            return self._delete_locked(ids, missing)

    def _delete_locked(self, ids: list[int], missing: str) -> list[int]:
        gone = self._table.delete(ids)  # durable from here on
        if not gone:
            raise NotFound(missing)
        by_encoder: dict[str, list[int]] = {}
        for m in gone:
            by_encoder.setdefault(m.encoder_id, []).append(m.key_id)
            self._identity_keys[m.identity_id] -= 1
            if self._identity_keys[m.identity_id] <= 0:
                del self._identity_keys[m.identity_id]
        for encoder_id, key_ids in by_encoder.items():
            self._indexes[encoder_id].remove(np.array(key_ids, np.int64))
        return sorted(m.key_id for m in gone)

    # -- key transform rotation -------------------------------------------------------------------
    def rotate_transform(self, new: Optional[LatentTransform], batch: int = 1024) -> int:
        """Re-transform every stored key from the current transform to `new`; crash-safe (each batch is
        one transaction with its progress; reopen with transform=new, previous_transform=old to resume).
        Returns the number of keys rewritten."""
        with self._write_lock:
            self._table.write_counter(_ROTATION, json.dumps(
                {"from": _fingerprint(self._transform), "to": _fingerprint(new)}).encode())
            n = self._run_rotation(self._transform, new, 0, batch)
            self._transform = new
            self._indexes.clear()
            self._identity_keys.clear()
            self._rebuild()
            return n

    def _resume_rotation(self, previous: Optional[LatentTransform]) -> None:
        raw = self._table.get_counter(_ROTATION)
        if raw is None:
            return
        plan = json.loads(raw)
        if plan["to"] != _fingerprint(self._transform) or plan["from"] != _fingerprint(previous):
            raise FailedPrecondition(
                "an interrupted key-transform rotation must be resumed: open with the new secret as transform "
                "and the old one as previous_transform")
        upto = self._table.get_counter(_ROTATION_UPTO)
        after = int.from_bytes(upto, "big") if upto else 0
        log.warning("resuming key-transform rotation after key %d", after)
        self._run_rotation(previous, self._transform, after, 1024)

    def _run_rotation(self, old, new, after: int, batch: int) -> int:
        def fn(x):  # (B, 18, 512) stored under `old` -> stored under `new`
            plain = old.inverse(x) if old is not None else x
            return new.forward(plain) if new is not None else plain

        def finish(txn):
            self._table.set_marker(txn, "transform", _fingerprint(new))
            self._table.delete_counter(txn, _ROTATION)

        n = 0
        while True:
            after, count = self._table.rewrite_latents(fn, after, batch, _ROTATION_UPTO, finish)
            if count == 0:
                return n
            n += count

    def list_identities(self, after: str = "", limit: int = 1000) -> tuple[list[tuple[str, int]], str]:
        """Identities in sorted order after `after`, with their key counts, and the cursor to go on."""
        check_id(after, "after", required=False)
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= 100_000:
            raise InvalidArgument(f"limit must be in 1..100000, got {quote(limit)}")
        names = sorted(n for n in list(self._identity_keys) if n > after)
        page = [(n, self._identity_keys.get(n, 0)) for n in names[:limit]]
        return page, (page[-1][0] if len(names) > limit else "")

    def stats(self, layers: tuple[int, ...] = tuple(range(4))) -> StoreStats:
        """Counts and sizes; in ann mode also each index's default candidates for an unfiltered match over
        `layers` (0-based W+ indices like MatchQuery.layers; the server passes its default subset) at its
        current size."""
        layers = tuple(layers)
        used, mapped = self._table.sizes()
        indexes = dict(self._indexes)
        return StoreStats(
            keys=sum(len(ix) for ix in indexes.values()),
            identities=len(self._identity_keys),
            keys_by_encoder={e: len(ix) for e, ix in indexes.items()},
            index_bytes=sum(ix.nbytes for ix in indexes.values()),
            lmdb_used_bytes=used, lmdb_map_bytes=mapped, index_mode=self.config.index_mode,
            next_key_id=self._table.next_key_id(), ann_max_candidates=self.config.ann_max_candidates,
            ann_layers=layers,
            ann_candidates_by_encoder={e: ix.default_candidates(layers) if _is_ann(ix) else 0
                                       for e, ix in indexes.items()},
            ann_backend=resolve_backend(self.config) if self.config.index_mode == "ann" else "",
            gpu_index_bytes=sum(getattr(ix, "device_bytes", 0) for ix in indexes.values()),
        )


_ROTATION = b"rotation"
_ROTATION_UPTO = b"rotation_upto"


def _fingerprint(transform: Optional[LatentTransform]) -> str:
    return transform.fingerprint if transform is not None else "none"


def _bounds_of(found: SearchResult) -> np.ndarray:
    """Per-hit error bounds of a float16 search (+inf where the index gives none: every hit is then re-scored)."""
    return found.bounds if found.bounds is not None else np.full(found.scores.shape, np.inf)


FIRST_READ_MARGIN = 0.25  # _first_reads: the fraction of the k-th hit's error bound its float16 score is guessed to
#                           stand off its float32 score at most (float16 moved top-1 cosines by up to 1.2e-5 in the 1M
#                           benchmark, 1/40 of the ~4.9e-4 bound); a wrong guess costs a second read, not a wrong answer


def _first_reads(hit: tuple, k: int, metric: str) -> list[int]:
    """Key ids among one probe's float16 hits (ids, scores, bounds; best first) to read at once: the first k, and
    each later hit whose best case (score +- bound) reaches the k-th float16 score, less FIRST_READ_MARGIN of its
    bound (a guess at the k-th float32 score; `_unsettled` checks it)."""
    ids, s16, bound = hit
    if len(ids) <= k:
        return ids.tolist()
    if metric == "cosine":  # higher is better
        later = s16[k:] + bound[k:] >= s16[k - 1] - FIRST_READ_MARGIN * bound[k - 1]
    else:
        later = s16[k:] - bound[k:] <= s16[k - 1] + FIRST_READ_MARGIN * bound[k - 1]
    return ids[:k].tolist() + ids[k:][later].tolist()


def _unsettled(hit: tuple, scored: dict[int, float], gone: set[int], k: int, metric: str) -> list[int]:
    """Hits not scored yet for this probe (and not deleted meanwhile: `gone`) whose best case (float16 score +-
    bound) reaches the k-th best float32 score scored: they could rank among the k. With fewer than k scored (keys
    deleted meanwhile), every such hit."""
    ids, s16, bound = hit
    left = np.array([j not in scored and j not in gone for j in ids.tolist()], bool)
    if not left.any():
        return []
    got = np.array(list(scored.values()))
    if len(got) < k:
        return ids[left].tolist()
    if metric == "cosine":
        kth = np.partition(got, len(got) - k)[len(got) - k]  # the k-th highest
        reach = s16 + bound >= kth
    else:
        kth = np.partition(got, k - 1)[k - 1]  # the k-th smallest distance
        reach = s16 - bound <= kth
    return ids[left & reach].tolist()


def _is_ann(index: VectorIndex) -> bool:
    return isinstance(index, AnnLayerIndex) and index.ann


def _hit(m: StoredMeta, score: float) -> Hit:
    return Hit(m.key_id, m.identity_id, score, m.camera_id, m.video_id, m.track_id, m.t_start, m.t_end)


def _check_key_id(key_id) -> int:
    if isinstance(key_id, bool) or not isinstance(key_id, (int, np.integer)) or not 1 <= int(key_id) < 2**63:
        raise InvalidArgument(f"key_id must be a positive integer, got {key_id!r}")
    return int(key_id)


def _check_attributes(attrs) -> dict:
    out = {}
    attrs = dict(attrs)
    if len(attrs) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{len(attrs)} attributes, the limit is {MAX_ATTRIBUTES}")
    for k, v in attrs.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument("attributes must map strings to strings")
        if len(k) > MAX_ATTRIBUTE_KEY_LEN or len(v) > MAX_ATTRIBUTE_VALUE_LEN:
            raise InvalidArgument(f"attribute {quote(k, 40)} is too long "
                                  f"(key <= {MAX_ATTRIBUTE_KEY_LEN}, value <= {MAX_ATTRIBUTE_VALUE_LEN} chars)")
        out[k] = v
    return out
