"""Key transform invariance and rotation, encryption at rest, crypto-shredding (real LMDB, temp dirs)."""

from __future__ import annotations

import os
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from fkhelpers import random_keys

from facekeys.errors import FailedPrecondition, InvalidArgument, NotFound
from facekeys.security.crypto import Keyring, LocalKeyProvider
from facekeys.security.transform import KeyTransform
from facekeys.store import KeyStore, MatchQuery, NewKey, StoreConfig

CFG = StoreConfig(map_size=1 << 29, durable=False)
SECRET_A = b"deployment-secret-A-0123456789"
SECRET_B = b"deployment-secret-B-9876543210"
MASTER = os.urandom(32)


def queries(x):
    probes = x[:6] + 0.3 * random_keys(6, seed=99)
    return [MatchQuery.build(probes, "enc", layers, metric, top_k=8)
            for layers in ("high:1", "high:4", "1,7,18", "low:5", "all") for metric in ("cosine", "l2")]


def results(store, qs):
    return [[[(h.key_id, h.score) for h in p.hits] for p in store.match(q).results] for q in qs]


def assert_same(a, b):
    for qa, qb in zip(a, b):
        for pa, pb in zip(qa, qb):
            assert [k for k, _ in pa] == [k for k, _ in pb]
            np.testing.assert_allclose([s for _, s in pa], [s for _, s in pb], rtol=1e-5, atol=1e-5)


def test_transform_is_orthogonal_and_invertible():
    t = KeyTransform(SECRET_A)
    x = random_keys(5, seed=1)
    y = t.forward(x)
    assert np.abs(y - x).max() > 1.0  # the stored key is not the latent
    np.testing.assert_allclose(t.inverse(y), x, atol=1e-4)
    np.testing.assert_allclose(np.einsum("nld,nld->nl", y, y), np.einsum("nld,nld->nl", x, x), rtol=1e-5)
    assert KeyTransform(SECRET_A).fingerprint == t.fingerprint != KeyTransform(SECRET_B).fingerprint
    with pytest.raises(InvalidArgument):
        KeyTransform(b"short")


def test_matching_is_invariant_under_the_transform(tmp_path):
    x = random_keys(200, seed=2)
    qs = queries(x)
    with KeyStore.open(tmp_path / "plain", CFG) as plain, \
            KeyStore.open(tmp_path / "secret", CFG, transform=KeyTransform(SECRET_A)) as secret:
        for s in (plain, secret):
            s.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
        assert_same(results(plain, qs), results(secret, qs))
        stored = secret.get(1, include_latent=True).latent
        assert np.abs(stored - x[0]).max() > 1.0
        np.testing.assert_allclose(KeyTransform(SECRET_A).inverse(stored[None])[0], x[0], atol=1e-4)


def test_wrong_or_missing_secret_is_refused(tmp_path):
    with KeyStore.open(tmp_path / "s", CFG, transform=KeyTransform(SECRET_A)) as s:
        s.enroll([NewKey(random_keys(1)[0], "enc")])
    for kwargs in ({"transform": KeyTransform(SECRET_B)}, {}):
        with pytest.raises(FailedPrecondition, match="transform"):
            KeyStore.open(tmp_path / "s", CFG, **kwargs)


def test_rotation_rewrites_every_key_and_resumes_after_a_crash(tmp_path):
    x = random_keys(300, seed=3)
    qs = queries(x)
    with KeyStore.open(tmp_path / "ref", CFG) as ref:
        ref.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
        expected = results(ref, qs)
    path = tmp_path / "s"
    with KeyStore.open(path, CFG, transform=KeyTransform(SECRET_A)) as s:
        s.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
        assert s.rotate_transform(KeyTransform(SECRET_B), batch=64) == 300
        assert_same(results(s, qs), expected)
    with pytest.raises(FailedPrecondition):
        KeyStore.open(path, CFG, transform=KeyTransform(SECRET_A))
    # crash in the middle of a rotation B -> A: a child process dies after two batches
    code = f"""
import os, sys
from facekeys.security.transform import KeyTransform
from facekeys.store import KeyStore, StoreConfig
from facekeys.store import lmdb_table
orig = lmdb_table.LmdbTable.rewrite_latents
calls = []
def dying(self, *a, **k):
    if len(calls) == 2:
        os._exit(9)
    calls.append(1)
    return orig(self, *a, **k)
lmdb_table.LmdbTable.rewrite_latents = dying
s = KeyStore.open({str(path)!r}, StoreConfig(map_size=1 << 29, durable=True), transform=KeyTransform({SECRET_B!r}))
s.rotate_transform(KeyTransform({SECRET_A!r}), batch=50)
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with pytest.raises(FailedPrecondition, match="resumed"):
        KeyStore.open(path, CFG, transform=KeyTransform(SECRET_A))
    with KeyStore.open(path, CFG, transform=KeyTransform(SECRET_A), previous_transform=KeyTransform(SECRET_B)) as s:
        assert_same(results(s, qs), expected)
    with KeyStore.open(path, CFG, transform=KeyTransform(SECRET_A)) as s:  # finished: plain open works
        assert_same(results(s, qs), expected)


_RINGS: list[Keyring] = []


def keyring(path, master=MASTER):
    """A keyring on `path`; the one this opened before is closed first (a keyring has one owner at a time)."""
    while _RINGS:
        _RINGS.pop().close()
    ring = Keyring(path / "keyring", LocalKeyProvider(master))
    _RINGS.append(ring)
    return ring


@pytest.fixture(autouse=True)
def _close_rings():
    yield
    while _RINGS:
        _RINGS.pop().close()


def raw_values(path, env=None):
    """Every stored value as bytes, read with plain LMDB (no facekeys decoding)."""
    own = env is None
    env = env or lmdb.open(str(path / "lmdb"), max_dbs=8, readonly=True, lock=False)
    out = {}
    for name in (b"latent", b"meta", b"boxes"):
        with env.begin(db=env.open_db(name, create=False)) as txn:
            out[name] = {bytes(k): bytes(v) for k, v in txn.cursor()}
    if own:
        env.close()
    return out


def test_values_are_encrypted_at_rest_and_need_the_master_key(tmp_path):
    x = random_keys(10, seed=4)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path)) as s:
        s.enroll([NewKey(v, "enc", "alice", attributes={"note": "camera at the north gate"}) for v in x[:5]])
        s.enroll([NewKey(v, "enc", "bob") for v in x[5:]])
        hit = s.match(MatchQuery.build(x[7], "enc", "all", "l2")).results[0].hits[0]
        assert hit.identity_id == "bob" and hit.score == pytest.approx(0, abs=1e-3)
    raw = raw_values(tmp_path)
    plain = x[0].astype("<f4").tobytes()
    blob = b"".join(v for db in raw.values() for v in db.values())
    assert plain[:64] not in blob and b"north gate" not in blob
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path)) as s:  # reopen: rebuilt from ciphertext
        np.testing.assert_array_equal(s.get(3, include_latent=True).latent, x[2])
    with pytest.raises(FailedPrecondition, match="wrong master key"):
        KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path, os.urandom(32)))
    with pytest.raises(FailedPrecondition, match="encryption"):
        KeyStore.open(tmp_path / "lmdb", CFG)


def test_erasure_crypto_shreds_the_identity(tmp_path):
    x = random_keys(6, seed=5)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path)) as s:
        s.enroll([NewKey(v, "enc", "carol") for v in x[:3]] + [NewKey(v, "enc", "dave") for v in x[3:]])
        before = raw_values(tmp_path, s._table.env)
        assert s.delete_identity("carol") == [1, 2, 3]
        for probe in x[:3]:
            assert all(h.identity_id != "carol" for h in s.match(MatchQuery.build(probe, "enc", "all", "l2", top_k=6)).results[0].hits)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path)) as s:
        assert s.stats().keys == 3 and s.list_identities() == ([("dave", 3)], "")
        with pytest.raises(NotFound):
            s.get(1)
    ring = keyring(tmp_path)
    old = before[b"latent"][(1).to_bytes(8, "big")]
    with pytest.raises(NotFound, match="erased"):
        ring.open(ring.token("carol"), b"latent" + (1).to_bytes(8, "big"), old)  # the old bytes no longer decrypt
    dave = before[b"latent"][(4).to_bytes(8, "big")]
    assert np.frombuffer(ring.open(ring.token("dave"), b"latent" + (4).to_bytes(8, "big"), dave), "<f4").size == 18 * 512


def test_swapped_ciphertexts_are_detected(tmp_path):
    x = random_keys(2, seed=6)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path)) as s:
        s.enroll([NewKey(x[0], "enc", "erin"), NewKey(x[1], "enc", "erin")])
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=8)
    db = env.open_db(b"latent")
    with env.begin(write=True, db=db) as txn:
        a, b = txn.get((1).to_bytes(8, "big")), txn.get((2).to_bytes(8, "big"))
        txn.put((1).to_bytes(8, "big"), b)
        txn.put((2).to_bytes(8, "big"), a)
    env.close()
    with pytest.raises(FailedPrecondition, match="tampered"):
        KeyStore.open(tmp_path / "lmdb", CFG, cipher=keyring(tmp_path))


@pytest.mark.parametrize("cfg", [dict(index_mode="ann"), dict(vector_dtype="float16")])
def test_encryption_refuses_index_modes_with_plaintext_files_on_disk(tmp_path, cfg):
    """ann and float16 modes keep vectors and snapshots in files that are not encrypted yet: refused."""
    with pytest.raises(FailedPrecondition, match="encryption at rest"):
        KeyStore.open(tmp_path / "lmdb", StoreConfig(map_size=1 << 28, **cfg), cipher=keyring(tmp_path))
    assert not (tmp_path / "lmdb" / "indexes").exists()


def test_read_ahead_of_encrypted_latents_goes_through_lmdb(tmp_path):
    """Sealed latents are placed and read ahead whole, then opened from py-lmdb's value (never read raw)."""
    from facekeys.records import Where
    from facekeys.store import lmdb_pages
    from facekeys.store.lmdb_table import LmdbTable

    if not lmdb_pages.SUPPORTED:
        pytest.skip("needs posix_fadvise and mincore")
    x = random_keys(40, seed=6)
    t = LmdbTable(tmp_path / "db", 64 << 20, durable=False, cipher=keyring(tmp_path))
    metas = t.put([NewKey(v, "enc", where=Where("cam")) for v in x], [f"id{i % 3}" for i in range(40)])
    placed = []
    locate = t._locator.locate
    t._locator.locate = lambda *a: placed.append(locate(*a)) or placed[-1]
    got = t.get_latents([m.key_id for m in metas], (17, 0, 1))
    for i, m in enumerate(metas):
        np.testing.assert_array_equal(got[m.key_id], x[i][[17, 0, 1]])
    assert len(placed) == 1 and all(w is not None and w[1] > 36864 for w in placed[0])  # sealed values, placed
    assert t.latents_misplaced == 0
    t.close()
