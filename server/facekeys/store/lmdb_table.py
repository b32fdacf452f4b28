"""LMDB: the source of truth for keys, their metadata and their blurred-region indices.

Databases (all keyed by the 8-byte big-endian key id unless noted):
  meta     JSON metadata of the key
  latent   (18, 512) float32 little-endian bytes
  boxes    (M, 5) int32 little-endian bytes: frame_index, x, y, w, h
  ident    identity_id UTF-8 + NUL + key id -> b""   (identity -> keys; identities never contain NUL);
           encrypted: identity token (32) + key id -> b""
  counters b"next_key_id" -> 8-byte big-endian; b"marker:<name>" -> settings fixed at creation;
           b"setting:<name>" -> small values other components keep here (the audit log's anchor)
A write returns only after its transaction has committed; with `durable=True` the commit is fsync'd.

With a `ValueCipher` (encryption at rest), latent, boxes and meta values are sealed under the key's
identity; the meta value is then `token sealed-json`, where the token (the cipher's keyed hash of the identity
id) is all the file says of the identity: no identity id is stored in the clear, and an erased identity's
token goes with its rows and its data key. The authenticated data binds each value to its database and key id,
so values cannot be swapped between records. Data keys the rows no longer use (an enrolment refused after
sealing, a crash between the two) are forgotten at once, and swept when the table opens.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

import lmdb
import numpy as np

from facekeys.dims import KEY_SHAPE
from facekeys.errors import FacekeysError, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

from facekeys.records import KeyRecord, NewKey, Obfuscation, Where
from facekeys.store.lmdb_pages import SUPPORTED, ValueLocator

class ValueCipher(Protocol):
    """Seals values under a per-identity key, named by a keyed token of the identity
    (facekeys.security.crypto.Keyring implements it)."""

    fingerprint: str

    def token(self, identity: str) -> bytes: ...  # (TOKEN_BYTES,) keyed hash naming the identity

    def seal(self, token: bytes, aad: bytes, data: bytes) -> bytes: ...

    def open(self, token: bytes, aad: bytes, blob: bytes) -> bytes: ...

    def has(self, token: bytes) -> bool: ...

    def subjects(self) -> list[bytes]: ...  # every token holding a data key

    def forget(self, token: bytes) -> bool: ...

    legacy_slots: int  # data keys still filed under the identity id's plain hash (an older keyring)

    def adopt(self, identity: str) -> bool: ...  # re-file such a key under the identity's token

    def drop_legacy(self) -> int: ...


TOKEN_BYTES = 32


_U64 = struct.Struct(">Q")
_NEXT = b"next_key_id"
LAYER_BYTES = KEY_SHAPE[1] * 4  # one layer of a stored latent: 512 little-endian float32
LATENT_BYTES = KEY_SHAPE[0] * LAYER_BYTES  # an unencrypted latent value: (18, 512)
READ_THREADS = 16  # get_latents: threads reading uncached values at once (they wait on the disk, not the CPU)


def _major_faults() -> int:
    """Major page faults of the calling thread so far (Linux; 0 where the platform cannot say)."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    return resource.getrusage(who).ru_majflt if who is not None else 0


def _runs(layers: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct layers as runs of consecutive ones: [(first layer, count)]."""
    out: list[tuple[int, int]] = []
    for layer in layers:
        if out and out[-1][0] + out[-1][1] == layer:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((layer, 1))
    return out


def _k(key_id: int) -> bytes:
    return _U64.pack(key_id)


def _has_prefix(cursor, prefix: bytes) -> bool:
    return cursor.set_range(prefix) and bytes(cursor.key()).startswith(prefix)


@dataclass(frozen=True)
class StoredMeta:
    """The metadata part of a record, as kept in `meta` (no latent, no boxes)."""

    key_id: int
    identity_id: str
    encoder_id: str
    camera_id: str
    video_id: str
    track_id: str
    t_start: float
    t_end: float
    method: str
    strength: float
    attributes: dict
    created_at: float

    def encode(self) -> bytes:
        return json.dumps(
            [self.identity_id, self.encoder_id, self.camera_id, self.video_id, self.track_id,
             self.t_start, self.t_end, self.method, self.strength, self.attributes, self.created_at],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, key_id: int, raw: bytes) -> "StoredMeta":
        return cls(key_id, *json.loads(raw))


class LmdbTable:
    def __init__(self, path: Path, map_size: int, durable: bool = True, cipher: Optional[ValueCipher] = None,
                 read_threads: int = READ_THREADS, prefetch: bool = True):
        if read_threads < 1:
            raise InvalidArgument(f"read_threads must be >= 1, got {read_threads}")
        self.read_threads = read_threads
        self._readers: Optional[ThreadPoolExecutor] = None
        self._readers_lock = threading.Lock()
        self.latents_read = 0  # keys get_latents was asked for since open (the float32 re-scores' reads)
        self.latents_advised = 0  # of those, uncached values whose pages were asked of the kernel at once
        self.latents_misplaced = 0  # values placed by the B-tree whose page header disagreed (read through py-lmdb)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._open_env = lambda: lmdb.open(
            str(path), map_size=map_size, subdir=True, max_dbs=8, sync=durable, metasync=durable,
            readahead=False, max_readers=512, lock=True,
        )
        self._open_dbs(self._open_env())
        self._cipher = cipher
        self._tokens: dict[str, bytes] = {}
        self._put_lock = threading.Lock()  # a put's new data keys are forgotten if it fails: puts one at a time
        self._locator = None
        self.check_marker("encryption", f"aes-gcm:{cipher.fingerprint}" if cipher else "none")
        if cipher is not None:
            self._tokenize_identities()
            self._sweep_data_keys()
        # get_latents' placed reads (None: prefetch=False, or a platform where values cannot be placed)
        self._locator = ValueLocator(path / "data.mdb", self.env.stat()["psize"]) if prefetch and SUPPORTED else None

    def _open_dbs(self, env) -> None:
        self.env = env
        self._meta = env.open_db(b"meta")
        self._latent = env.open_db(b"latent")
        self._boxes = env.open_db(b"boxes")
        self._ident = env.open_db(b"ident")
        self._counters = env.open_db(b"counters")

    def check_marker(self, name: str, value: str) -> None:
        """Record a setting on first use; refuse to open with a different one later."""
        key = f"marker:{name}".encode()
        with self.env.begin(write=True, db=self._counters) as txn:
            stored = txn.get(key)
            if stored is None:
                if txn.get(_NEXT) is not None:
                    raise FailedPrecondition(f"store at {self.path} predates the {name} setting {value!r}")
                txn.put(key, value.encode())
            elif stored.decode() != value:
                raise FailedPrecondition(
                    f"store at {self.path} was created with {name}={stored.decode()!r}, not {value!r} "
                    f"(wrong key or secret?)")

    def set_marker(self, txn, name: str, value: str) -> None:
        txn.put(f"marker:{name}".encode(), value.encode(), db=self._counters)

    def delete_counter(self, txn, key: bytes) -> None:
        txn.delete(key, db=self._counters)

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        if self._locator is not None:
            self._locator.close()
        self.env.close()

    # -- value sealing ----------------------------------------------------------------------------
    def _seal(self, identity: str, tag: bytes, kb: bytes, data: bytes) -> bytes:
        return data if self._cipher is None else self._cipher.seal(self._token(identity), tag + kb, data)

    def _open(self, identity: str, tag: bytes, kb: bytes, blob: bytes) -> bytes:
        return blob if self._cipher is None else self._cipher.open(self._token(identity), tag + kb, blob)

    def _encode_meta(self, meta: "StoredMeta", kb: bytes) -> bytes:
        raw = meta.encode()
        if self._cipher is None:
            return raw
        token = self._token(meta.identity_id)
        return token + self._cipher.seal(token, b"meta" + kb, raw)

    def _decode_meta(self, key_id: int, raw: bytes) -> "StoredMeta":
        if self._cipher is not None:
            raw = self._cipher.open(raw[:TOKEN_BYTES], b"meta" + _k(key_id), raw[TOKEN_BYTES:])
        return StoredMeta.decode(key_id, raw)

    def forget_identity(self, identity_id: str) -> bool:
        """Crypto-shred an identity's data key (no-op without encryption)."""
        return self._cipher.forget(self._token(identity_id)) if self._cipher is not None else False

    # -- identity tokens (encrypted tables) -------------------------------------------------------
    def _token(self, identity: str) -> bytes:
        t = self._tokens.get(identity)
        if t is None:
            t = self._cipher.token(identity)
            if len(self._tokens) < 65536:  # a cache, bounded
                self._tokens[identity] = t
        return t

    def _ident_prefix(self, identity: str) -> bytes:
        return self._token(identity) if self._cipher is not None else identity.encode() + b"\x00"

    def _tokenize_identities(self) -> None:
        """A table encrypted before identity tokens keeps identity ids in the clear (ident keys, meta
        prefixes): rewrite them as tokens, in one transaction, after re-filing each data key under its token;
        then compact the file, so that the pages that held the ids in the clear are not kept as free pages."""
        with self.env.begin(db=self._counters) as txn:
            state = txn.get(b"marker:identity-index")
        if state is None:
            state = self._rewrite_identities()
        if state == b"token-v1-uncompacted":
            self._compact()
            with self._write() as txn:
                self.set_marker(txn, "identity-index", "token-v1")

    def _compact(self) -> None:
        """Replace data.mdb by a compacted copy of itself (LMDB's copy with compaction: live pages only)."""
        tmp = self.path / "compact.tmp"
        tmp.mkdir(exist_ok=True)
        (tmp / "data.mdb").unlink(missing_ok=True)
        self.env.copy(str(tmp), compact=True)
        self.env.close()
        os.replace(tmp / "data.mdb", self.path / "data.mdb")
        tmp.rmdir()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._open_dbs(self._open_env())

    def _rewrite_identities(self) -> bytes:
        """The rewrite; returns the state it leaves (b"token-v1" for a new table: nothing to compact)."""
        with self._write() as txn:
            if txn.get(_NEXT, db=self._counters) is None:
                self.set_marker(txn, "identity-index", "token-v1")
                return b"token-v1"
            legacy = [bytes(k) for k in txn.cursor(db=self._ident).iternext(values=False)]
            for identity in {k[:-9].decode() for k in legacy}:
                self._cipher.adopt(identity)
            for k in legacy:
                identity, kb = k[:-9].decode(), k[-8:]
                token = self._token(identity)
                txn.delete(k, db=self._ident)
                txn.put(token + kb, b"", db=self._ident)
                raw = bytes(txn.get(kb, db=self._meta))
                txn.put(kb, token + raw.partition(b"\x00")[2], db=self._meta)
            self.set_marker(txn, "identity-index", "token-v1-uncompacted")
        self._cipher.drop_legacy()
        return b"token-v1-uncompacted"

    def _sweep_data_keys(self) -> None:
        """Forget data keys no row uses (a crash between sealing and committing an enrolment)."""
        used = set()
        with self.env.begin(db=self._ident) as txn:
            for k in txn.cursor().iternext(values=False):
                used.add(bytes(k[:TOKEN_BYTES]))
        for token in self._cipher.subjects():
            if token not in used:
                self._cipher.forget(token)
        if self._cipher.legacy_slots:
            self._cipher.drop_legacy()

    def _write(self):
        return _WriteTxn(self.env)

    # -- writes -----------------------------------------------------------------------------------
    def put(self, keys: Sequence[NewKey], identities: Sequence[str]) -> list[StoredMeta]:
        """Store checked keys in one transaction; assign key ids. Returns after commit."""
        with self._put_lock:
            if self._cipher is None:
                return self._put(keys, identities)
            fresh = {t for t in map(self._token, identities) if not self._cipher.has(t)}
            try:
                return self._put(keys, identities)
            except BaseException:
                for token in fresh:  # made for this refused put only: nothing stored is sealed under them
                    self._cipher.forget(token)
                raise

    def _put(self, keys: Sequence[NewKey], identities: Sequence[str]) -> list[StoredMeta]:
        now = time.time()
        out = []
        with self._write() as txn:
            raw = txn.get(_NEXT, db=self._counters)
            next_id = _U64.unpack(raw)[0] if raw else 1
            for key, identity in zip(keys, identities):
                w = key.where
                meta = StoredMeta(
                    next_id, identity, key.encoder_id, w.camera_id, w.video_id, w.track_id,
                    w.t_start, w.t_end, key.obfuscation.method, float(key.obfuscation.strength),
                    dict(key.attributes), now,
                )
                kb = _k(next_id)
                txn.put(kb, self._encode_meta(meta, kb), db=self._meta)
                txn.put(kb, self._seal(identity, b"latent", kb, key.latent.astype("<f4").tobytes()), db=self._latent)
                txn.put(kb, self._seal(identity, b"boxes", kb, w.boxes.astype("<i4").tobytes()), db=self._boxes)
                txn.put(self._ident_prefix(identity) + kb, b"", db=self._ident)
                out.append(meta)
                next_id += 1
            txn.put(_NEXT, _U64.pack(next_id), db=self._counters)
        return out

    def delete(self, key_ids: Sequence[int]) -> list[StoredMeta]:
        """Delete keys that exist; returns the metadata of those deleted."""
        gone = []
        with self._put_lock:
            with self._write() as txn:
                for key_id in key_ids:
                    kb = _k(key_id)
                    raw = txn.get(kb, db=self._meta)
                    if raw is None:
                        continue
                    meta = self._decode_meta(key_id, raw)
                    txn.delete(kb, db=self._meta)
                    txn.delete(kb, db=self._latent)
                    txn.delete(kb, db=self._boxes)
                    txn.delete(self._ident_prefix(meta.identity_id) + kb, db=self._ident)
                    gone.append(meta)
                emptied = [t for t in {self._ident_prefix(m.identity_id) for m in gone}
                           if not _has_prefix(txn.cursor(db=self._ident), t)] if self._cipher is not None else []
            for token in emptied:  # an identity's last key went: its data key goes too (no orphan slots)
                self._cipher.forget(token)
        return gone

    # -- reads ------------------------------------------------------------------------------------
    def keys_of_identity(self, identity_id: str) -> list[int]:
        prefix = self._ident_prefix(identity_id)
        out = []
        with self.env.begin(db=self._ident) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k in cur.iternext(values=False):
                    if not k.startswith(prefix):
                        break
                    out.append(_U64.unpack(k[len(prefix):])[0])
        return out

    def get_meta(self, key_ids: Sequence[int]) -> dict[int, StoredMeta]:
        out = {}
        with self.env.begin(db=self._meta, buffers=True) as txn:
            for key_id in key_ids:
                raw = txn.get(_k(key_id))
                if raw is not None:
                    out[key_id] = self._decode_meta(key_id, bytes(raw))
        return out

    def get_latents(self, key_ids: Sequence[int], layers: Sequence[int]) -> dict[int, np.ndarray]:
        """{key_id: (|S|, 512) float32} of the stored latents' selected layers (0-based); absent keys are left out.

        At 1M keys the 37 GB of values do not fit in RAM beside the float16 index, so a Match's values are mostly
        read from the disk. A value spans ten 4 KB overflow pages, and py-lmdb's get touches every one, one
        after another (GIL released); the map is opened without readahead (MDB_NORDAHEAD: this box reads ahead
        8 MB per fault). So where the values can be placed in the data file (`lmdb_pages.ValueLocator`,
        `prefetch=True`), `_read_placed` asks the kernel for every uncached one at once and reads an unencrypted
        latent's selected layers straight from the file. Otherwise the first key is read in the calling thread
        and, when that read went to the disk (a major fault), the rest by `read_threads` threads at once.
        26 uncached values x 4 layers of 200k: 10.6-13.7 ms one after another, 5.7-6.6 ms with 16 threads,
        1.4-1.5 ms placed; cached 0.4-0.5 ms either way (`benchmarks/bench_lmdb_reads.py`)."""
        lay = list(layers)
        ids = list(key_ids)
        if not ids:
            return {}
        with self._readers_lock:
            self.latents_read += len(ids)
        if self._locator is not None:
            return self._read_placed(ids, lay)
        before = _major_faults()
        out = self._read_latents(None, ids[:1], lay)
        rest = ids[1:]
        if rest and _major_faults() > before:
            out.update(self._read_threaded(rest, lay))
        elif rest:
            out.update(self._read_latents(None, rest, lay))
        return out

    def _read_placed(self, key_ids: list[int], lay: list[int]) -> dict[int, np.ndarray]:
        """Read `key_ids` in one transaction after asking the kernel for all their uncached pages at once. Their
        places in the data file come from the transaction's B-tree pages (`lmdb_pages.ValueLocator`); an
        unencrypted latent is then read straight from the file, only the pages of the selected layers (3 of 10
        for high:4) after checking its first page's header; encrypted ones (sealed whole), and any whose check
        fails, through py-lmdb."""
        layers = sorted(set(lay))
        runs = _runs(layers)  # contiguous runs of layers: (first layer, count)
        spans = [(first * LAYER_BYTES, count * LAYER_BYTES) for first, count in runs]
        with self.env.begin(buffers=True) as txn:
            where = self._locator.locate(txn.id(), b"latent", [_k(i) for i in key_ids])
            if all(w is None for w in where):  # nothing placed (absent keys, or the snapshot moved on)
                return self._read_threaded(key_ids, lay)
            sealed = self._cipher is not None  # encrypted values are opened whole, from py-lmdb's value
            ranges = [self._locator.ranges(w, [(0, w[1])] if sealed else spans) for w in where if w is not None]
            resident = self._locator.cached([r for rs in ranges for r in rs])
            ends = np.cumsum([len(rs) for rs in ranges])  # each value's ranges end there in `resident`
            cold = [rs for rs, end in zip(ranges, ends) if not all(resident[end - len(rs):end])]
            self._locator.advise([r for rs in cold for r in rs])
            advised = len(cold)
            pick = None if layers == lay else [layers.index(i) for i in lay]
            direct = [i for i, w in enumerate(where) if not sealed and w is not None and w[1] == LATENT_BYTES]
            buf = np.empty((len(direct), len(layers), KEY_SHAPE[1]), "<f4")  # (m, |S| sorted, 512)
            read = self._locator.read_many([where[i] for i in direct], spans, buf)
            out = {key_ids[i]: buf[j] if pick is None else buf[j][pick] for j, i in enumerate(direct) if read[j]}
            misplaced = len(read) - sum(read)
            rest = [key_id for key_id in key_ids if key_id not in out]
            out.update(self._read_latents(txn, rest, lay))
        with self._readers_lock:
            self.latents_advised += advised
            self.latents_misplaced += misplaced
        return out

    def _read_threaded(self, key_ids: list[int], lay: list[int]) -> dict[int, np.ndarray]:
        """Read `key_ids` split over the reader threads (each waits on the disk, not the CPU)."""
        if len(key_ids) < 2 or self.read_threads < 2:
            return self._read_latents(None, key_ids, lay)
        parts = [key_ids[i :: self.read_threads] for i in range(min(self.read_threads, len(key_ids)))]
        out = {}
        for part in self._reader_pool().map(lambda p: self._read_latents(None, p, lay), parts):
            out.update(part)
        return out

    def _reader_pool(self) -> ThreadPoolExecutor:
        with self._readers_lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(self.read_threads, thread_name_prefix="lmdb-read")
            return self._readers

    def _read_latents(self, txn, key_ids: Sequence[int], lay: list[int]) -> dict[int, np.ndarray]:
        """get_latents of `key_ids` one after another, in `txn` (a buffers=True read transaction) or a new one.
        Unencrypted values are sliced in place (only the selected layers are copied)."""
        if txn is None:
            with self.env.begin(buffers=True) as txn:
                return self._read_latents(txn, key_ids, lay)
        out = {}
        for key_id in key_ids:
            kb = _k(key_id)
            raw = txn.get(kb, db=self._latent)
            if raw is None:
                continue
            if self._cipher is not None:
                meta = self._decode_meta(key_id, bytes(txn.get(kb, db=self._meta)))
                raw = self._open(meta.identity_id, b"latent", kb, bytes(raw))
            out[key_id] = np.frombuffer(raw, "<f4").reshape(KEY_SHAPE)[lay].copy()
        return out

    def iter_meta(self) -> Iterator[StoredMeta]:
        """Metadata of every key in key-id order (decrypted when the store is encrypted; no latents), read in
        one read transaction."""
        with self.env.begin(db=self._meta, buffers=True) as txn:
            for kb, raw in txn.cursor():
                yield self._decode_meta(_U64.unpack(bytes(kb))[0], bytes(raw))

    def get(self, key_id: int, include_latent: bool) -> KeyRecord:
        kb = _k(key_id)
        with self.env.begin(buffers=True) as txn:
            raw = txn.get(kb, db=self._meta)
            if raw is None:
                raise NotFound(f"key {key_id} not found")
            m = self._decode_meta(key_id, bytes(raw))
            boxes_raw = self._open(m.identity_id, b"boxes", kb, bytes(txn.get(kb, db=self._boxes)))
            boxes = np.frombuffer(boxes_raw, "<i4").reshape(-1, 5).astype(np.int32)
            latent = None
            if include_latent:
                lat_raw = self._open(m.identity_id, b"latent", kb, bytes(txn.get(kb, db=self._latent)))
                latent = np.frombuffer(lat_raw, "<f4").reshape(KEY_SHAPE).copy()
        return KeyRecord(
            key_id=key_id, identity_id=m.identity_id, encoder_id=m.encoder_id,
            where=Where(m.camera_id, m.video_id, m.track_id, m.t_start, m.t_end, boxes),
            obfuscation=Obfuscation(m.method, m.strength), attributes=m.attributes,
            created_at=m.created_at, latent=latent,
        )

    def scan(self, batch: int) -> Iterator[tuple[list[StoredMeta], np.ndarray]]:
        """All keys in key-id order, in batches of (metadata, latents (B, 18, 512))."""
        with self.env.begin(buffers=True) as txn:
            lat = txn.cursor(db=self._latent)
            metas, vecs = [], []
            for kb, raw in txn.cursor(db=self._meta):
                kb = bytes(kb)
                key_id = _U64.unpack(kb)[0]
                meta = self._decode_meta(key_id, bytes(raw))
                metas.append(meta)
                vecs.append(np.frombuffer(self._open(meta.identity_id, b"latent", kb, bytes(lat.get(kb))), "<f4"))
                if len(metas) == batch:
                    yield metas, np.stack(vecs).reshape(-1, *KEY_SHAPE)
                    metas, vecs = [], []
            if metas:
                yield metas, np.stack(vecs).reshape(-1, *KEY_SHAPE)

    def rewrite_latents(self, fn, after: int, batch: int, progress_key: bytes, finish) -> tuple[int, int]:
        """Rewrite the latents of up to `batch` keys with id > `after` in one transaction, recording
        progress under `progress_key`; when none are left, call `finish(txn)` in that transaction.
        Returns (last key id rewritten, count), or (0, 0) when done. Crash-safe: each step is atomic."""
        with self._write() as txn:
            cur = txn.cursor(db=self._meta)
            rows = []
            if cur.set_range(_k(after + 1)):
                for kb, raw in cur:
                    rows.append((bytes(kb), self._decode_meta(_U64.unpack(bytes(kb))[0], bytes(raw))))
                    if len(rows) == batch:
                        break
            if not rows:
                finish(txn)
                txn.delete(progress_key, db=self._counters)
                return 0, 0
            old = np.stack([
                np.frombuffer(self._open(m.identity_id, b"latent", kb, bytes(txn.get(kb, db=self._latent))), "<f4")
                for kb, m in rows]).reshape(-1, *KEY_SHAPE)
            new = fn(old)  # (B, 18, 512)
            for (kb, m), lat in zip(rows, new):
                txn.put(kb, self._seal(m.identity_id, b"latent", kb, lat.astype("<f4").tobytes()), db=self._latent)
            last = rows[-1][1].key_id
            txn.put(progress_key, _U64.pack(last), db=self._counters)
            return last, len(rows)

    def write_counter(self, key: bytes, value: bytes) -> None:
        with self._write() as txn:
            txn.put(key, value, db=self._counters)

    def get_counter(self, key: bytes) -> Optional[bytes]:
        with self.env.begin(db=self._counters) as txn:
            return txn.get(key)

    def get_setting(self, name: str) -> Optional[bytes]:
        return self.get_counter(_setting_key(name))

    def put_setting(self, name: str, value: bytes) -> None:
        """One committed (with `durable`: fsync'd) transaction."""
        self.write_counter(_setting_key(name), value)

    def next_key_id(self) -> int:
        with self.env.begin(db=self._counters) as txn:
            raw = txn.get(_NEXT)
        return _U64.unpack(raw)[0] if raw else 1

    def sizes(self) -> tuple[int, int]:
        """(bytes in use, map size)."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"], info["map_size"]


def _setting_key(name: str) -> bytes:
    return f"setting:{name}".encode()


def read_setting(path: Path, name: str) -> Optional[bytes]:
    """One setting of the store at `path`, read without opening the store (another process, the server,
    may hold it open for writing; no cipher needed: settings are not sealed)."""
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise InvalidArgument(f"no key store at {path} (no data.mdb)")
    try:
        env = lmdb.open(str(path), readonly=True, subdir=True, max_dbs=8, lock=True)
    except lmdb.Error as e:
        raise FailedPrecondition(f"cannot open the key store at {path} read-only: {e}") from None
    try:
        with env.begin() as txn:
            try:
                db = env.open_db(b"counters", txn=txn, create=False)
            except lmdb.NotFoundError:
                return None
            return txn.get(_setting_key(name), db=db)
    finally:
        env.close()


class _WriteTxn:
    """A write transaction whose LMDB failures surface as domain errors; aborted on any exception."""

    def __init__(self, env):
        self._env = env

    def __enter__(self):
        self._txn = self._env.begin(write=True)
        return self._txn

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._txn.commit()
            else:
                self._txn.abort()
        except lmdb.MapFullError:
            self._txn.abort()
            raise ResourceExhausted(_FULL.format(self._env.info()["map_size"])) from None
        if isinstance(exc, lmdb.MapFullError):
            raise ResourceExhausted(_FULL.format(self._env.info()["map_size"])) from exc
        if isinstance(exc, lmdb.Error) and not isinstance(exc, FacekeysError):
            raise ResourceExhausted(f"LMDB write failed ({exc}); nothing from this request was stored") from exc
        return False


_FULL = "LMDB map is full (map_size={} bytes); nothing from this request was stored; restart with a larger --map-size"
