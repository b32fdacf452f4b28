#!/usr/bin/env python3
"""Consistent backup and restore of a facekeys key store's LMDB (`<data-dir>/lmdb`).

    facekeys-backup backup  --data-dir /data --out /backups/2026-01-31T0200   # server may keep running
    facekeys-backup verify  /backups/2026-01-31T0200
    facekeys-backup restore /backups/2026-01-31T0200 --data-dir /data [--force] # server must be stopped

`backup` is LMDB's own hot copy (mdb_copy -c, here py-lmdb's Environment.copy(compact=True)): it reads
one read-only transaction, so the copy is the store exactly as of one commit, while enrolments go on.
Every acknowledged enrolment is in LMDB (the vector indexes are rebuilt from it at start-up).

With encryption at rest (`--master-key-file`) the per-identity data keys live in <data-dir>/keyring,
and an LMDB copy without it is undecryptable: the keyring is copied too, while the LMDB snapshot's read
transaction is still open. A data key is written (and fsynced) before the LMDB commit that first uses
it, so that copy holds a key for every identity in the snapshot; an identity erased (crypto-shredded)
after the snapshot began stays erased in the backup. The master key is NOT in the backup (keep it apart).

The backup folder holds lmdb/data.mdb, keyring (if the store has one) and MANIFEST.json (sha256, sizes,
entry counts per table); it appears under its final name only when complete.

`restore` verifies the backup, then lays data.mdb into <data-dir>/lmdb and the keyring into
<data-dir>/keyring. It refuses a data directory that already holds a store unless --force, which moves
the current contents aside into <data-dir>/pre-restore-<time>/ (delete that once the restored store
checks out). The audit log folder <data-dir>/audit is left in place either way: audit history is never
rolled back by a restore. Exit status 0 on success, 1 on any failure, with one
`facekeys-backup: error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import lmdb

MANIFEST = "MANIFEST.json"
FORMAT = 1  # still 1: a manifest without "keyring" is a backup of a store without encryption at rest
KEYRING = "keyring"  # <data-dir>/keyring: per-identity data keys (facekeys.security.crypto.Keyring)
KEYRING_SLOT = 128  # bytes per keyring slot; byte 0: 0 free, 1 or 2 a data key, 3 the index key
KEEP_ON_RESTORE = ("audit",)  # never moved aside or replaced by a restore


class BackupError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _open(lmdb_dir: Path, readonly: bool, lock: bool) -> lmdb.Environment:
    data = lmdb_dir / "data.mdb"
    if not data.is_file():
        raise BackupError(f"no LMDB store at {lmdb_dir} (data.mdb missing)")
    # LMDB raises a map smaller than the committed data to what is needed; max_dbs as the server opens it.
    return lmdb.open(str(lmdb_dir), readonly=readonly, lock=lock, max_dbs=16, subdir=True,
                     map_size=max(data.stat().st_size, 1 << 20), readahead=False, create=False)


def table_counts(env: lmdb.Environment) -> dict[str, int]:
    """Entries per named table (and in the unnamed main table, which lists them)."""
    counts = {}
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
        counts[""] = len(names)
    for name in names:
        with env.begin() as txn:
            db = env.open_db(name, txn=txn, create=False)
            counts[name.decode()] = txn.stat(db)["entries"]
    return counts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(data_dir: Path, out: Path, compact: bool = True) -> dict:
    src = Path(data_dir) / "lmdb"
    out = Path(out)
    if out.exists():
        raise BackupError(f"{out} already exists; backups are never overwritten")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run
    (partial / "lmdb").mkdir(parents=True)
    t0 = time.monotonic()
    keyring = Path(data_dir) / KEYRING
    env = _open(src, readonly=True, lock=True)  # lock=True: a registered reader, safe beside the server
    try:
        with env.begin() as txn:  # one snapshot for the counts and the copy
            txn_id = txn.id()
            env.copy(str(partial / "lmdb"), compact=compact, txn=txn)
            if keyring.is_file():  # after the snapshot began: covers every identity in it (see above)
                shutil.copyfile(keyring, partial / KEYRING)
    finally:
        env.close()
    copy = _open(partial / "lmdb", readonly=True, lock=False)
    try:
        counts = table_counts(copy)
    finally:
        copy.close()
    data = partial / "lmdb" / "data.mdb"
    manifest = {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(src.resolve()),
        "source_txn_id": txn_id,
        "compact": compact,
        "lmdb_version": ".".join(map(str, lmdb.version())),
        "bytes": data.stat().st_size,
        "sha256": _sha256(data),
        "tables": counts,
        "keys": counts.get("meta"),
        "keyring": _keyring_info(partial / KEYRING) if (partial / KEYRING).is_file() else None,
        "seconds": round(time.monotonic() - t0, 3),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for p in (data, partial / MANIFEST, *([partial / KEYRING] if manifest["keyring"] else [])):
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(partial / "lmdb")
    _fsync_dir(partial)
    partial.rename(out)
    _fsync_dir(out.parent)
    return manifest


def _keyring_info(path: Path) -> dict:
    raw = path.read_bytes()
    if len(raw) % KEYRING_SLOT:
        raise BackupError(f"keyring {path}: size {len(raw)} is not a multiple of {KEYRING_SLOT} (damaged)")
    used = sum(1 for i in range(0, len(raw), KEYRING_SLOT) if raw[i] in (1, 2))
    return {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "slots_used": used}


def verify(backup_dir: Path) -> dict:
    backup_dir = Path(backup_dir)
    try:
        manifest = json.loads((backup_dir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{backup_dir} is not a facekeys backup ({MANIFEST}: {e})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {manifest.get('format')!r}")
    data = backup_dir / "lmdb" / "data.mdb"
    if not data.is_file():
        raise BackupError(f"{data} is missing")
    digest = _sha256(data)
    if digest != manifest["sha256"]:
        raise BackupError(f"{data}: sha256 {digest} != manifest {manifest['sha256']} (corrupt or altered)")
    env = _open(backup_dir / "lmdb", readonly=True, lock=False)
    try:
        counts = table_counts(env)
    finally:
        env.close()
    if counts != manifest["tables"]:
        raise BackupError(f"entry counts {counts} != manifest {manifest['tables']}")
    if manifest.get("keyring"):
        kr = backup_dir / KEYRING
        if not kr.is_file():
            raise BackupError(f"{kr} is missing: the store was encrypted at rest, its LMDB copy alone is useless")
        info = _keyring_info(kr)
        if info["sha256"] != manifest["keyring"]["sha256"]:
            raise BackupError(f"{kr}: sha256 {info['sha256']} != manifest {manifest['keyring']['sha256']} "
                              "(corrupt or altered)")
    return manifest


def restore(backup_dir: Path, data_dir: Path, force: bool = False) -> dict:
    manifest = verify(backup_dir)
    data_dir = Path(data_dir)
    target = data_dir / "lmdb"
    if data_dir.exists() and any(p.name not in KEEP_ON_RESTORE for p in data_dir.iterdir()):
        if not force:
            raise BackupError(f"{data_dir} is not empty; stop the server and pass --force to move its "
                              "contents aside, or restore into an empty directory")
        aside = data_dir / f"pre-restore-{dt.datetime.now().strftime('%Y%m%dT%H%M%S')}"
        aside.mkdir()
        for p in list(data_dir.iterdir()):
            if p != aside and not p.name.startswith("pre-restore-") and p.name not in KEEP_ON_RESTORE:
                p.rename(aside / p.name)
    target.mkdir(parents=True, exist_ok=True)
    partial = target / "data.mdb.partial"
    shutil.copyfile(backup_dir / "lmdb" / "data.mdb", partial)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    partial.rename(target / "data.mdb")
    _fsync_dir(target)
    if manifest.get("keyring"):
        partial = data_dir / (KEYRING + ".partial")
        shutil.copyfile(backup_dir / KEYRING, partial)
        os.chmod(partial, 0o600)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        partial.rename(data_dir / KEYRING)
        _fsync_dir(data_dir)
    env = _open(target, readonly=False, lock=True)  # also creates lock.mdb the way the server expects
    try:
        counts = table_counts(env)
    finally:
        env.close()
    if counts != manifest["tables"]:
        raise BackupError(f"restored store has {counts}, backup had {manifest['tables']}")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="facekeys-backup", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("backup", help="hot, consistent copy of <data-dir>/lmdb (+ keyring) into a new folder")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="backup folder to create (must not exist)")
    p.add_argument("--no-compact", action="store_true", help="page-for-page copy (keeps free pages)")
    p = sub.add_parser("verify", help="check a backup's checksum and tables")
    p.add_argument("backup", type=Path)
    p = sub.add_parser("restore", help="restore a backup into a (stopped) server's data directory")
    p.add_argument("backup", type=Path)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--force", action="store_true", help="move an existing store aside instead of refusing")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "backup":
            out = backup(args.data_dir, args.out, compact=not args.no_compact)
        elif args.cmd == "verify":
            out = verify(args.backup)
        else:
            out = restore(args.backup, args.data_dir, force=args.force)
    except (BackupError, lmdb.Error, OSError) as e:
        print(f"facekeys-backup: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "command": args.cmd, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
