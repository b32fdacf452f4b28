"""Backup while the server runs (and keeps enrolling), wipe, restore, restart: every key matches again
with the same top hit and the same score. Plus the tool's refusals and its corruption check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from deploytools import DEPLOY

BACKUP = DEPLOY / "backup.py"


def tool(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, BACKUP, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def start(data_dir, master_key_file=None):
    from facekeys.security.config import SecurityConfig
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    return KeyStoreServer(ServerConfig(data_dir=data_dir, host="127.0.0.1", port=0, metrics_port=-1, workers=4,
                                       store=StoreConfig(map_size=1 << 30),
                                       security=SecurityConfig(master_key_file=master_key_file))).start()


def top_hits(client, latents, metric):
    r = client.match(latents, "enc", layers="all", metric=metric, top_k=1)
    return [(p.hits[0].key_id, p.hits[0].score) for p in r.results]


def test_hot_backup_wipe_restore_every_key_matches(tmp_path):
    from facekeys.client import Client
    from facekeys.records import NewKey, Where

    from fkhelpers import random_keys

    data = tmp_path / "data"
    lat = random_keys(120, seed=11)
    extra = random_keys(200, seed=12)
    srv = start(data)
    try:
        with Client(srv.address) as c:
            keys = c.enroll([NewKey(l, "enc", identity_id=f"person-{i % 40}",
                                    where=Where("cam-1", "vid-1", f"t{i}", 1.7e9 + i, 1.7e9 + i + 2,
                                                np.array([[i, 1, 2, 30, 40]], np.int32)))
                             for i, l in enumerate(lat)])
            ids = [k.key_id for k in keys]
            before = {m: top_hits(c, lat, m) for m in ("cosine", "l2")}
            assert [k for k, _ in before["cosine"]] == ids  # each key's best hit is itself

            # Back up while another client keeps enrolling: the copy is one consistent snapshot.
            stop = threading.Event()
            errors = []

            def writer():
                try:
                    with Client(srv.address) as w:
                        for i in range(0, len(extra), 10):
                            if stop.is_set():
                                return
                            w.enroll([NewKey(l, "enc") for l in extra[i:i + 10]])
                except Exception as e:  # noqa: BLE001 -- reported below
                    errors.append(e)

            t = threading.Thread(target=writer)
            t.start()
            manifest = json.loads(tool("backup", "--data-dir", data, "--out", tmp_path / "bk").stdout)
            stop.set()
            t.join(timeout=60)
            assert not t.is_alive() and not errors, errors
            live_keys = c.stats().keys
        assert len(lat) <= manifest["keys"] <= live_keys
        assert manifest["tables"]["meta"] == manifest["tables"]["latent"] == manifest["keys"]
        assert manifest["keyring"] is None  # no encryption at rest here
    finally:
        srv.stop(grace=0)

    assert not (tmp_path / "bk.partial").exists()
    tool("verify", tmp_path / "bk")
    shutil.rmtree(data)  # the disk is gone
    out = json.loads(tool("restore", tmp_path / "bk", "--data-dir", data).stdout)
    assert out["keys"] == manifest["keys"]

    srv = start(data)
    try:
        with Client(srv.address) as c:
            assert c.stats().keys == manifest["keys"]  # exactly the snapshot: no torn enrolment batch
            assert manifest["keys"] % 10 == len(lat) % 10
            after = {m: top_hits(c, lat, m) for m in ("cosine", "l2")}
            assert after == before  # same top hit, bit-identical score
            rec = c.get(ids[7])
            assert rec.identity_id == "person-7" and rec.where.track_id == "t7"
            np.testing.assert_array_equal(rec.where.boxes, [[7, 1, 2, 30, 40]])
            # and the restored store takes new keys with fresh ids
            (k,) = c.enroll([NewKey(random_keys(1, seed=99)[0], "enc")])
            assert k.key_id > max(ids)
    finally:
        srv.stop(grace=0)


def test_encrypted_store_backup_carries_the_keyring(tmp_path, deployment_secrets):
    """With encryption at rest the keyring is part of the backup: restored with it, every key matches
    again; a backup without it fails verification. And the hazard deploy/README.md warns about: an old
    keyring backup brings back an identity erased (crypto-shredded) after it was taken."""
    from facekeys.client import Client
    from facekeys.records import NewKey

    from fkhelpers import random_keys

    master = deployment_secrets / "keystore" / "master.key"
    data = tmp_path / "data"
    lat = random_keys(12, seed=21)
    srv = start(data, master)
    try:
        with Client(srv.address) as c:
            ids = [k.key_id for k in c.enroll([NewKey(l, "enc", identity_id=f"p{i % 4}") for i, l in enumerate(lat)])]
            before = top_hits(c, lat, "cosine")
            assert [k for k, _ in before] == ids
            manifest = json.loads(tool("backup", "--data-dir", data, "--out", tmp_path / "bk").stdout)
            erased = c.delete_identity("p0")  # crypto-shredded: its keyring slot is zeroed
            assert sorted(erased) == sorted(ids[0::4])
    finally:
        srv.stop(grace=0)
    assert manifest["keyring"]["slots_used"] == 4 and (tmp_path / "bk" / "keyring").is_file()
    assert (tmp_path / "bk" / "keyring").read_bytes() != (data / "keyring").read_bytes()  # p0's slot differs
    tool("verify", tmp_path / "bk")

    # Without its keyring an encrypted store's backup is useless: verify and restore refuse it.
    shutil.copytree(tmp_path / "bk", tmp_path / "no-keyring")
    (tmp_path / "no-keyring" / "keyring").unlink()
    r = tool("verify", tmp_path / "no-keyring", check=False)
    assert r.returncode == 1 and "keyring" in r.stderr and "useless" in r.stderr

    # Restore over the live store (--force); the audit folder stays where it is.
    (data / "audit").mkdir()
    (data / "audit" / "audit.log").write_text("history\n")
    tool("restore", tmp_path / "bk", "--data-dir", data, "--force")
    assert (data / "audit" / "audit.log").read_text() == "history\n"
    (aside,) = data.glob("pre-restore-*")
    assert (aside / "keyring").is_file() and not (aside / "audit").exists()
    assert (data / "keyring").read_bytes() == (tmp_path / "bk" / "keyring").read_bytes()
    srv = start(data, master)
    try:
        with Client(srv.address) as c:
            assert top_hits(c, lat, "cosine") == before  # p0 included: the old keyring resurrected it
            assert c.get(ids[0]).identity_id == "p0"
    finally:
        srv.stop(grace=0)


def test_refusals_and_corruption(tmp_path):
    from facekeys.store import KeyStore, StoreConfig

    from fkhelpers import random_keys
    from facekeys.records import NewKey

    data = tmp_path / "data"
    with KeyStore.open(data / "lmdb", StoreConfig(map_size=1 << 28, durable=False)) as s:
        s.enroll([NewKey(l, "enc") for l in random_keys(5)])
    tool("backup", "--data-dir", data, "--out", tmp_path / "bk")

    r = tool("backup", "--data-dir", data, "--out", tmp_path / "bk", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = tool("backup", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "bk2", check=False)
    assert r.returncode == 1 and "no LMDB store" in r.stderr

    # Restoring over a store needs --force, which keeps the old one aside.
    r = tool("restore", tmp_path / "bk", "--data-dir", data, check=False)
    assert r.returncode == 1 and "not empty" in r.stderr
    tool("restore", tmp_path / "bk", "--data-dir", data, "--force")
    (aside,) = data.glob("pre-restore-*")
    assert (aside / "lmdb" / "data.mdb").is_file() and (data / "lmdb" / "data.mdb").is_file()

    # A flipped byte is caught before anything is restored.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "bk", corrupt)
    f = corrupt / "lmdb" / "data.mdb"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    r = tool("verify", corrupt, check=False)
    assert r.returncode == 1 and "sha256" in r.stderr
    r = tool("restore", corrupt, "--data-dir", tmp_path / "fresh", check=False)
    assert r.returncode == 1 and not (tmp_path / "fresh").exists()


def test_shell_wrappers_local_mode(tmp_path):
    from facekeys.store import KeyStore, StoreConfig

    from fkhelpers import random_keys
    from facekeys.records import NewKey

    data = tmp_path / "data"
    with KeyStore.open(data / "lmdb", StoreConfig(map_size=1 << 28, durable=False)) as s:
        s.enroll([NewKey(l, "enc") for l in random_keys(3)])
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", DEPLOY / "backup.sh", "local", data, tmp_path / "backups"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (bk,) = (tmp_path / "backups").iterdir()
    assert json.loads(r.stdout)["keys"] == 3
    r = subprocess.run(["bash", DEPLOY / "restore.sh", "local", bk, tmp_path / "restored"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with KeyStore.open(tmp_path / "restored" / "lmdb", StoreConfig(map_size=1 << 28)) as s:
        assert s.stats().keys == 3
    r = subprocess.run(["bash", DEPLOY / "backup.sh", "bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    if shutil.which("mdb_stat"):  # LMDB's own tool agrees the restored file is a valid environment
        r = subprocess.run(["mdb_stat", "-a", tmp_path / "restored" / "lmdb"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "Status of meta" in r.stdout, r.stdout + r.stderr
