"""Index snapshots on disk, so that a restart does not re-train, and their check against LMDB.

A snapshot of one `AnnLayerIndex` lives in `<index dir>/snapshots/`:

    snap-<seq>/manifest.json   format, rows, alive count, digest of the alive key ids, files with sizes
                               (and sha256 for the small ones), segment layout
    snap-<seq>/columns.npz     ids, alive, norms, filter columns, interned names
    snap-<seq>/codebooks.npz   per-layer means and PQ centroids (one array per sub-quantiser count m)
    snap-<seq>/s<SS>-rows.npy, s<SS>-g<GG>-<H>.faiss    each segment's rows and group-index shards
    snap-<seq>/s<SS>-refine.npy                         each segment's refine codes (when ann_refine_m is set)
    CURRENT                    the name of the snapshot in force

The float16 vector files are NOT copied: they are append-only (a deleted key's rows are zeroed, never
reused), so a snapshot only records how many rows it covers, after fsync'ing them.

Write protocol (crash-safe at every step): write everything into `tmp-<seq>-<rand>/`, fsync each file
and the directory, rename it to `snap-<seq>/`, fsync the parent, then replace CURRENT (write CURRENT.tmp,
fsync, rename, fsync the parent), and only then delete older snapshots. A crash before the CURRENT
rename leaves the previous snapshot in force; a torn CURRENT falls back to the newest complete `snap-*`.

At start-up `restore` compares every snapshot with LMDB (the source of truth): key count and a sha256
digest of the sorted alive key ids, plus a content check of a few keys' vectors. Equal: used as is.
A small difference (a crash between an Enroll/Delete and the next snapshot): the snapshot is loaded and
brought in line (missing keys added, extra keys removed). Otherwise: the index is rebuilt from LMDB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import faiss
import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import FacekeysError

log = logging.getLogger("facekeys.store.snapshot")

FORMAT = 3  # 2: groups carry their PQ width m (codebooks per m); 3: segments carry refine codes (refine_m)
CONTENT_SAMPLE = 8  # keys whose vectors are compared with LMDB when a snapshot is adopted


class SnapshotError(FacekeysError):
    """No usable snapshot: missing, torn, corrupt, or written with other settings."""


@dataclass
class IndexState:
    rows: int
    columns: dict  # name -> array[:rows]
    identities: list
    cameras: list
    segments: tuple  # ann.Segment
    codebooks: object  # ann.Codebooks or None
    covered: int
    trained_n: int
    ann: bool
    pq_m: int
    groups: tuple  # ((layers tuple, m), ...): the group indexes of every segment
    refine_m: int = 0  # the segments' refine codes' PQ width (0: none)


def ids_digest(ids: np.ndarray) -> str:
    """sha256 of the sorted key ids (int64 little-endian): equal digests, equal key sets."""
    return hashlib.sha256(np.sort(np.asarray(ids, "<i8")).tobytes()).hexdigest()


# -- writing ----------------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _seq(name: str) -> int:
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return -1


def write(root: Path, state: IndexState) -> Path:
    """Write a snapshot atomically; returns its directory."""
    root.mkdir(parents=True, exist_ok=True)
    seq = max([_seq(p.name) for p in root.iterdir() if p.name.startswith(("snap-", "tmp-"))], default=0) + 1
    tmp = root / f"tmp-{seq:08d}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    files: dict[str, dict] = {}

    def done(name: str, checksum: bool = False) -> None:
        p = tmp / name
        _fsync_path(p)
        files[name] = {"size": p.stat().st_size, **({"sha256": _sha256(p)} if checksum else {})}

    with open(tmp / "columns.npz", "wb") as f:
        np.savez(f, **state.columns, identities=np.array(state.identities, dtype=object).astype(str),
                 cameras=np.array(state.cameras, dtype=object).astype(str))
    done("columns.npz", checksum=True)
    if state.codebooks is not None:
        with open(tmp / "codebooks.npz", "wb") as f:
            np.savez(f, means=state.codebooks.means,
                     **{f"centroids_{m}": c for m, c in state.codebooks.centroids.items()})
        done("codebooks.npz", checksum=True)
    segments = []
    for s, seg in enumerate(state.segments):
        np.save(tmp / f"s{s:02d}-rows.npy", seg.rows)
        done(f"s{s:02d}-rows.npy", checksum=True)
        shards = []
        for g, group in enumerate(state.groups):
            for h, (ix, offset) in enumerate(seg.groups[group]):
                name = f"s{s:02d}-g{g:02d}-{h}.faiss"
                faiss.write_index(ix, str(tmp / name))
                done(name)
                shards.append([g, name, offset])
        if seg.refine is not None:
            np.save(tmp / f"s{s:02d}-refine.npy", seg.refine)
            done(f"s{s:02d}-refine.npy")
        segments.append({"rows": len(seg.rows), "shards": shards, "refine": seg.refine is not None})
    ids = state.columns["ids"][state.columns["alive"]]
    manifest = {
        "format": FORMAT, "created": time.time(), "rows": state.rows, "count": int(len(ids)),
        "digest": ids_digest(ids), "covered": state.covered, "trained_n": state.trained_n,
        "ann": state.ann, "pq_m": state.pq_m, "refine_m": state.refine_m, "codebooks": state.codebooks is not None,
        "groups": [[list(layers), m] for layers, m in state.groups], "segments": segments, "files": files,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_path(tmp / "manifest.json")
    _fsync_path(tmp)
    final = root / f"snap-{seq:08d}"
    os.rename(tmp, final)
    _fsync_path(root)
    (root / "CURRENT.tmp").write_text(final.name)
    _fsync_path(root / "CURRENT.tmp")
    os.replace(root / "CURRENT.tmp", root / "CURRENT")
    _fsync_path(root)
    for p in root.iterdir():  # older snapshots and debris of crashed writes
        if p.is_dir() and p.name != final.name and p.name.startswith(("snap-", "tmp-")):
            shutil.rmtree(p, ignore_errors=True)
    return final


# -- reading ----------------------------------------------------------------------------------------
def _manifest(d: Path) -> dict:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SnapshotError(f"{d.name}: no readable manifest ({e})") from None
    if m.get("format") != FORMAT:
        raise SnapshotError(f"{d.name}: format {m.get('format')!r}, expected {FORMAT}")
    for name, info in m["files"].items():
        p = d / name
        if not p.exists() or p.stat().st_size != info["size"]:
            raise SnapshotError(f"{d.name}/{name}: missing or of the wrong size")
        if "sha256" in info and _sha256(p) != info["sha256"]:
            raise SnapshotError(f"{d.name}/{name}: checksum mismatch")
    return m


def latest(root: Path) -> tuple[Path, dict]:
    """The snapshot in force (CURRENT), else the newest complete one."""
    tried = []
    try:
        name = (root / "CURRENT").read_text().strip()
        tried.append(root / name)
    except OSError:
        pass
    if root.is_dir():
        tried += sorted((p for p in root.iterdir() if p.name.startswith("snap-")), key=lambda p: -_seq(p.name))
    errors = []
    for d in tried:
        try:
            return d, _manifest(d)
        except SnapshotError as e:
            errors.append(str(e))
    raise SnapshotError(f"no usable snapshot in {root}: {'; '.join(errors) or 'none written'}")


def read(root: Path) -> IndexState:
    from .ann import Codebooks, Segment

    d, m = latest(root)
    try:
        with np.load(d / "columns.npz", allow_pickle=False) as z:
            cols = {k: z[k] for k in z.files}
        identities = [str(x) for x in cols.pop("identities")]
        cameras = [str(x) for x in cols.pop("cameras")]
        codebooks = None
        if m["codebooks"]:
            with np.load(d / "codebooks.npz", allow_pickle=False) as z:
                books = {int(k.split("_")[1]): z[k] for k in z.files if k.startswith("centroids_")}
                codebooks = Codebooks(z["means"], books)
        segments = []
        groups = [(tuple(layers), int(pq_m)) for layers, pq_m in m["groups"]]
        for s, info in enumerate(m["segments"]):
            rows = np.load(d / f"s{s:02d}-rows.npy", allow_pickle=False)
            by_group: dict = {g: [] for g in groups}
            for g, name, offset in info["shards"]:
                by_group[groups[g]].append((faiss.read_index(str(d / name)), int(offset)))
            for g, shards in by_group.items():
                if sum(ix.ntotal for ix, _ in shards) != len(rows) or any(ix.d != len(g[0]) * DIM for ix, _ in shards):
                    raise SnapshotError(f"{d.name}: segment {s} disagrees with its rows")
            refine = None
            if info["refine"]:
                refine = np.load(d / f"s{s:02d}-refine.npy", allow_pickle=False)
                if refine.shape != (len(rows), N_LAYERS * m["refine_m"] // 2) or refine.dtype != np.uint8:
                    raise SnapshotError(f"{d.name}: segment {s}'s refine codes disagree with its rows")
            segments.append(Segment(rows, {g: tuple(v) for g, v in by_group.items()}, refine=refine))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SnapshotError(f"{d.name}: unreadable ({e})") from None
    ids, alive = cols["ids"], cols["alive"]
    if len(ids) != m["rows"] or int(alive.sum()) != m["count"] or ids_digest(ids[alive]) != m["digest"]:
        raise SnapshotError(f"{d.name}: columns disagree with the manifest")
    return IndexState(m["rows"], cols, identities, cameras, tuple(segments), codebooks, m["covered"],
                      m["trained_n"], m["ann"], m["pq_m"], tuple(groups), m["refine_m"])


# -- LMDB side --------------------------------------------------------------------------------------
def lmdb_inventory(table) -> tuple[dict[str, np.ndarray], Counter]:
    """Per-encoder sorted key ids and per-identity key counts, from LMDB metadata alone (no latents)."""
    ids: dict[str, list[int]] = {}
    identities: Counter[str] = Counter()
    for meta in table.iter_meta():  # key-id order, decrypted when the store is encrypted
        ids.setdefault(meta.encoder_id, []).append(meta.key_id)
        identities[meta.identity_id] += 1
    return {e: np.array(v, np.int64) for e, v in ids.items()}, identities  # key-id order = sorted ids


def restore(table, config, root: Path, new_index: Callable[[], object], background: bool = True):
    """Indexes for every encoder in LMDB: adopted snapshots where they agree (or nearly) with LMDB,
    rebuilt from LMDB otherwise. Returns ({encoder_id: index}, identity key counts)."""
    from .ann import AnnLayerIndex
    from .keystore import _attrs

    inventory, identities = lmdb_inventory(table)
    ann = config.index_mode == "ann"
    indexes: dict[str, AnnLayerIndex] = {}
    dirs = sorted(root.glob("idx-*")) if root.is_dir() else []
    for d in dirs:
        try:
            ix = AnnLayerIndex.load(config, d, ann=ann, background=False)
        except SnapshotError as e:
            log.warning("ignoring index snapshot %s: %s", d.name, e)
            continue
        snap_ids = ix.alive_ids()
        owner = _owner(snap_ids, inventory)
        if owner is None or owner in indexes:
            ix.close(snapshot=False)
            continue
        lmdb_ids = inventory[owner]
        extra = np.setdiff1d(snap_ids, lmdb_ids, assume_unique=True)
        missing = np.setdiff1d(lmdb_ids, snap_ids, assume_unique=True)
        if len(extra) + len(missing) > max(1000, len(lmdb_ids) // 20) or not _content_ok(table, ix, snap_ids, extra):
            log.warning("snapshot %s disagrees with LMDB for encoder %r (%d extra, %d missing keys): rebuilding",
                        d.name, owner, len(extra), len(missing))
            ix.close(snapshot=False)
            continue
        if len(extra):
            ix.remove(extra)
        for s in range(0, len(missing), config.rebuild_batch):
            recs = [table.get(int(k), include_latent=True) for k in missing[s : s + config.rebuild_batch]]
            ix.add(np.array([r.key_id for r in recs], np.int64), np.stack([r.latent for r in recs]),
                   [_attrs_of(r) for r in recs])
        if len(extra) or len(missing):
            log.info("snapshot %s brought in line with LMDB: %d removed, %d added", d.name, len(extra), len(missing))
        if background:
            ix.start_background()
        indexes[owner] = ix
    todo = {e for e in inventory if e not in indexes}
    if todo:
        fresh = {e: new_index() for e in todo}
        for metas, latents in table.scan(config.rebuild_batch):  # latents (B, 18, 512)
            by_encoder: dict[str, list[int]] = {}
            for j, m in enumerate(metas):
                if m.encoder_id in fresh:
                    by_encoder.setdefault(m.encoder_id, []).append(j)
            for e, rows in by_encoder.items():
                fresh[e].add(np.array([metas[j].key_id for j in rows], np.int64), latents[rows],
                             [_attrs(metas[j]) for j in rows])
        indexes.update(fresh)
    in_use = {getattr(ix, "path", None) for ix in indexes.values()}
    for d in dirs:
        if d not in in_use:
            shutil.rmtree(d, ignore_errors=True)
    return indexes, identities


def _attrs_of(rec):
    from .vectors import KeyAttrs

    w = rec.where
    return KeyAttrs(rec.identity_id, w.camera_id, w.t_start, w.t_end)


def _owner(snap_ids: np.ndarray, inventory: dict[str, np.ndarray]) -> Optional[str]:
    """The encoder whose LMDB keys the snapshot's keys are (key ids are unique across encoders)."""
    if len(snap_ids) == 0:
        return None
    sample = snap_ids[np.linspace(0, len(snap_ids) - 1, min(64, len(snap_ids))).astype(int)]
    best, hits = None, 0
    for e, ids in inventory.items():
        pos = np.minimum(np.searchsorted(ids, sample), len(ids) - 1)
        h = int((ids[pos] == sample).sum()) if len(ids) else 0
        if h > hits:
            best, hits = e, h
    return best


def _content_ok(table, ix, snap_ids: np.ndarray, extra: np.ndarray) -> bool:
    """A few keys' stored float16 vectors equal LMDB's latents rounded to float16."""
    keep = np.setdiff1d(snap_ids, extra, assume_unique=True)
    if len(keep) == 0:
        return True
    rng = np.random.default_rng(len(keep))
    for k in rng.choice(keep, min(CONTENT_SAMPLE, len(keep)), replace=False):
        rec = table.get(int(k), include_latent=True)
        if not np.array_equal(ix.stored_f16(int(k)).view(np.int16), rec.latent.astype(np.float16).view(np.int16)):
            return False
    return True
