"""Identity ids at rest under a master key: never in the clear in LMDB or the keyring, gone with erasure; no data
key outlives the rows sealed with it (refused enrolments, deleted last keys, crashes); keyrings and stores written
before identity tokens are converted in place. Real LMDB and keyring files in temp dirs, scanned as raw bytes."""

from __future__ import annotations

import hashlib
import json
import os

import lmdb
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fkhelpers import random_keys

from facekeys.errors import FailedPrecondition, NotFound, ResourceExhausted
from facekeys.security.crypto import SLOT, Keyring, LocalKeyProvider
from facekeys.store import KeyStore, MatchQuery, NewKey, StoreConfig

CFG = StoreConfig(map_size=1 << 28, durable=False)
MASTER = os.urandom(32)
PEOPLE = ("ada.lovelace.1815", "grace.hopper.1906", "alan.turing.1912")


@pytest.fixture
def rings():
    """Keyring(path) -> an open keyring on `path`, closed at the end (one process owns a keyring at a time)."""
    opened = []

    def make(path, master=MASTER):
        ring = Keyring(path / "keyring", LocalKeyProvider(master))
        opened.append(ring)
        return ring

    yield make
    for ring in opened:
        ring.close()


def occurrences(path, needle: bytes) -> int:
    """How often `needle` is in the files under `path`, read as raw bytes (free pages included)."""
    return sum(f.read_bytes().count(needle) for f in path.rglob("*") if f.is_file())


def enroll_people(store, per_person=4, seed=0):
    x = random_keys(len(PEOPLE) * per_person, seed=seed)
    keys = [NewKey(v, "enc", PEOPLE[i // per_person], attributes={"camera": "north-gate"}) for i, v in enumerate(x)]
    for i in range(0, len(keys), per_person):  # one batch per person, like a track's keys
        store.enroll(keys[i:i + per_person])
    return x


def data_slots(path) -> int:
    raw = (path / "keyring").read_bytes()
    return sum(raw[i] == 2 for i in range(0, len(raw), SLOT))


def test_the_scan_finds_plain_identity_ids(tmp_path):
    """The oracle: without a master key the ids are in the file, so a scan that counts 0 below means something."""
    with KeyStore.open(tmp_path / "lmdb", CFG) as s:
        enroll_people(s)
    assert all(occurrences(tmp_path, p.encode()) >= 4 for p in PEOPLE)


def test_identity_ids_are_never_stored_in_the_clear(tmp_path, rings):
    ring = rings(tmp_path)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=ring) as s:
        x = enroll_people(s)
        hit = s.match(MatchQuery.build(x[5], "enc", "all", "l2")).results[0].hits[0]
        assert hit.identity_id == PEOPLE[1]  # the store still answers with the id
        assert s.list_identities() == (sorted((p, 4) for p in PEOPLE), "")
        assert sorted(s.get(k).identity_id for k in (1, 5, 9)) == sorted(PEOPLE)
    for p in PEOPLE:
        assert occurrences(tmp_path, p.encode()) == 0
        assert occurrences(tmp_path, hashlib.sha256(p.encode()).digest()) == 0  # no unkeyed hash either
    assert data_slots(tmp_path) == 3


def test_erasure_leaves_no_trace_of_the_id_and_no_data_key(tmp_path, rings):
    ring = rings(tmp_path)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=ring) as s:
        enroll_people(s)
        token = ring.token(PEOPLE[0])
        assert occurrences(tmp_path, token) >= 4  # the token names the rows while they exist
        assert s.delete_identity(PEOPLE[0]) == [1, 2, 3, 4]
        assert occurrences(tmp_path / "lmdb", PEOPLE[0].encode()) == 0
        assert not ring.has(token) and token not in ring.subjects()
        with pytest.raises(NotFound):
            s.get(1)
    assert occurrences(tmp_path / "keyring", token) == 0  # its slot is zeros
    assert data_slots(tmp_path) == 2
    ring.close()
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=rings(tmp_path)) as s:
        assert s.list_identities() == (sorted((p, 4) for p in PEOPLE[1:]), "")


def test_a_refused_enrolment_leaves_no_data_key(tmp_path, rings):
    ring = rings(tmp_path)
    small = StoreConfig(map_size=1 << 20, durable=False)  # 1 MiB: a few dozen keys
    with KeyStore.open(tmp_path / "lmdb", small, cipher=ring) as s:
        x = random_keys(64, seed=3)
        stored = 0
        with pytest.raises(ResourceExhausted):
            for i in range(64):  # a new identity per batch until the map is full
                s.enroll([NewKey(x[i], "enc", f"person-{i}")])
                stored += 1
        assert 0 < stored < 64
        assert sorted(ring.subjects()) == sorted(ring.token(f"person-{i}") for i in range(stored))
        refused = ring.token(f"person-{stored}")
        assert not ring.has(refused)
        assert s.stats().keys == stored  # nothing partial, nothing lost
    assert data_slots(tmp_path) == stored


def test_deleting_an_identitys_last_key_forgets_its_data_key(tmp_path, rings):
    ring = rings(tmp_path)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=ring) as s:
        enroll_people(s, per_person=2)
        token = ring.token(PEOPLE[2])
        s.delete_key(5)
        assert ring.has(token)  # one key of that identity left
        s.delete_key(6)
        assert not ring.has(token) and data_slots(tmp_path) == 2
        s.enroll([NewKey(random_keys(1, seed=9)[0], "enc", PEOPLE[2])])  # a later enrolment gets a new data key
        assert ring.has(token) and s.get(7).identity_id == PEOPLE[2]


def test_a_data_key_no_row_uses_is_swept_when_the_store_opens(tmp_path, rings):
    """A crash after a data key is fsync'd but before the enrolment's transaction commits leaves such a key."""
    ring = rings(tmp_path)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=ring) as s:
        enroll_people(s, per_person=1)
    ghost = ring.token("never-committed")
    ring.seal(ghost, b"latent", b"x")  # what the crashed enrolment wrote
    assert data_slots(tmp_path) == 4
    ring.close()
    ring = rings(tmp_path)
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=ring) as s:
        assert not ring.has(ghost) and data_slots(tmp_path) == 3
        assert s.stats().keys == 3


def test_a_keyring_has_one_owner(tmp_path, rings):
    rings(tmp_path)
    with pytest.raises(FailedPrecondition, match="in use by another process"):
        Keyring(tmp_path / "keyring", LocalKeyProvider(MASTER))


def write_legacy_store(path, provider, people, x):
    """A store and keyring as facekeys wrote them before identity tokens: keyring slots under sha256(identity)
    (kind byte 1), ident keys `identity NUL key-id`, meta values `identity NUL sealed-json`."""
    path.mkdir(exist_ok=True)
    deks, ring = {}, b""
    for slot, p in enumerate(sorted(set(people))):
        h = hashlib.sha256(p.encode()).digest()
        deks[p] = AESGCM.generate_key(256)
        ring += (b"\1" + h + provider.wrap(deks[p], h + slot.to_bytes(8, "big"))).ljust(SLOT, b"\0")
    (path / "keyring").write_bytes(ring)

    def seal(p, aad, data):
        nonce = os.urandom(12)
        return nonce + AESGCM(deks[p]).encrypt(nonce, data, aad)

    env = lmdb.open(str(path / "lmdb"), max_dbs=8, map_size=1 << 28)
    dbs = {n: env.open_db(n) for n in (b"meta", b"latent", b"boxes", b"ident", b"counters")}
    with env.begin(write=True) as txn:
        for i, (p, v) in enumerate(zip(people, x)):
            kb = (i + 1).to_bytes(8, "big")
            meta = json.dumps([p, "enc", "cam", "vid", "trk", 0.0, 1.0, "mosaic", 16.0, {}, 0.0]).encode()
            txn.put(kb, p.encode() + b"\0" + seal(p, b"meta" + kb, meta), db=dbs[b"meta"])
            txn.put(kb, seal(p, b"latent" + kb, v.astype("<f4").tobytes()), db=dbs[b"latent"])
            txn.put(kb, seal(p, b"boxes" + kb, np.zeros((1, 5), "<i4").tobytes()), db=dbs[b"boxes"])
            txn.put(p.encode() + b"\0" + kb, b"", db=dbs[b"ident"])
        txn.put(b"next_key_id", (len(people) + 1).to_bytes(8, "big"), db=dbs[b"counters"])
        txn.put(b"marker:encryption", f"aes-gcm:{provider.fingerprint}".encode(), db=dbs[b"counters"])
        txn.put(b"marker:transform", b"none", db=dbs[b"counters"])
    env.close()


def test_a_store_written_before_tokens_is_converted_in_place(tmp_path, rings):
    provider = LocalKeyProvider(MASTER)
    people = [PEOPLE[0], PEOPLE[1], PEOPLE[0], PEOPLE[2], PEOPLE[1]]
    x = random_keys(len(people), seed=11)
    write_legacy_store(tmp_path, provider, people, x)
    assert occurrences(tmp_path, PEOPLE[0].encode()) == 4  # 2 ident keys + 2 meta prefixes
    ring = rings(tmp_path)
    assert ring.legacy_slots == 3
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=ring) as s:
        assert ring.legacy_slots == 0 and data_slots(tmp_path) == 3
        for k, (p, v) in enumerate(zip(people, x), start=1):  # same data keys: every value still opens
            rec = s.get(k, include_latent=True)
            assert rec.identity_id == p
            np.testing.assert_array_equal(rec.latent, v)
        assert s.list_identities() == (sorted([(PEOPLE[0], 2), (PEOPLE[1], 2), (PEOPLE[2], 1)]), "")
        assert s.delete_identity(PEOPLE[1]) == [2, 5]
    for p in PEOPLE:  # the rewrite compacted the file: the old pages with the ids in the clear are not kept
        assert occurrences(tmp_path, p.encode()) == 0
        assert occurrences(tmp_path, hashlib.sha256(p.encode()).digest()) == 0
    ring.close()
    with KeyStore.open(tmp_path / "lmdb", CFG, cipher=rings(tmp_path)) as s:  # and it opens as a current store
        assert s.list_identities() == (sorted([(PEOPLE[0], 2), (PEOPLE[2], 1)]), "")
