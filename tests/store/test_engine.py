"""KeyStore lifecycle on a real LMDB in a temp dir: enrol, get, delete, reopen, limits."""

from __future__ import annotations

import numpy as np
import pytest
from fkhelpers import random_keys

from facekeys.errors import InvalidArgument, NotFound, ResourceExhausted
from facekeys.store import KeyStore, MatchQuery, NewKey, Obfuscation, StoreConfig, Where


def keys_of(latents, encoder="enc", identity=""):
    return [NewKey(x, encoder, identity) for x in latents]


def best(store, latent, encoder="enc", metric="l2", layers="all"):
    r = store.match(MatchQuery.build(latent, encoder, layers, metric, top_k=1))
    return r.results[0].hits[0] if r.results[0].hits else None


def test_enrol_get_round_trip(store_factory):
    store = store_factory()
    x = random_keys(2, seed=1)
    boxes = np.array([[0, 10, 20, 30, 40], [1, 12, 21, 30, 41]])
    where = Where("cam-7", "sha256:abc", "track-3", 100.0, 101.5, boxes)
    [a, b] = store.enroll([NewKey(x[0], "enc", "alice", where, Obfuscation("mosaic", 8), {"k": "v"}),
                           NewKey(x[1], "enc")])
    assert a.identity_id == "alice" and b.identity_id and b.identity_id != "alice"
    assert b.key_id > a.key_id
    rec = store.get(a.key_id, include_latent=True)
    assert rec.where.camera_id == "cam-7" and rec.where.track_id == "track-3"
    np.testing.assert_array_equal(rec.where.boxes, boxes)
    np.testing.assert_array_equal(rec.latent, x[0])
    assert rec.obfuscation == Obfuscation("mosaic", 8.0) and rec.attributes == {"k": "v"}
    assert store.get(b.key_id).latent is None


def test_delete_key_and_identity_survive_reopen(tmp_path):
    cfg = StoreConfig(map_size=1 << 28)
    x = random_keys(6, seed=2)
    with KeyStore.open(tmp_path / "s", cfg) as store:
        ids = [k.key_id for k in store.enroll(keys_of(x[:3], identity="bob") + keys_of(x[3:], identity="eve"))]
        assert store.delete_key(ids[0]) == [ids[0]]
        assert sorted(store.delete_identity("eve")) == ids[3:]
        for i in (0, 3, 4, 5):
            with pytest.raises(NotFound):
                store.get(ids[i])
            assert best(store, x[i]).key_id not in ids[3:] + [ids[0]]
        with pytest.raises(NotFound):
            store.delete_identity("eve")
        with pytest.raises(NotFound):
            store.delete_key(ids[0])
        last = max(ids)
    with KeyStore.open(tmp_path / "s", cfg) as store:
        assert store.stats().keys == 2
        assert store.list_identities() == ([("bob", 2)], "")
        for i in (0, 3, 4, 5):
            assert best(store, x[i]).key_id in ids[1:3]
        [new] = store.enroll(keys_of(x[:1]))
        assert new.key_id > last  # ids are never reused


def test_reopen_rebuilds_identical_indexes(tmp_path):
    cfg = StoreConfig(map_size=1 << 29, durable=False)
    x = random_keys(120, seed=3)
    probes = x[:10] + 0.3 * random_keys(10, seed=4)
    with KeyStore.open(tmp_path / "s", cfg) as store:
        store.enroll(keys_of(x[:60], "enc-a"))
        store.enroll(keys_of(x[60:], "enc-b"))
        store.delete_key(5)
        before = [store.match(MatchQuery.build(probes, e, "high:5", m, top_k=7))
                  for e in ("enc-a", "enc-b") for m in ("cosine", "l2")]
    with KeyStore.open(tmp_path / "s", cfg) as store:
        after = [store.match(MatchQuery.build(probes, e, "high:5", m, top_k=7))
                 for e in ("enc-a", "enc-b") for m in ("cosine", "l2")]
        assert store.stats().keys_by_encoder == {"enc-a": 59, "enc-b": 60}
    assert before == after


def test_encoders_are_never_compared(store_factory):
    store = store_factory()
    x = random_keys(4, seed=5)
    store.enroll(keys_of(x[:2], "psp:aaa"))
    store.enroll(keys_of(x[2:], "psp:bbb"))
    r = store.match(MatchQuery.build(x[0], "psp:bbb", "all", "l2", top_k=10))
    assert {h.key_id for h in r.results[0].hits} == {3, 4}
    with pytest.raises(NotFound, match="psp:ccc"):
        store.match(MatchQuery.build(x[0], "psp:ccc"))


def test_bad_batch_stores_nothing(store_factory):
    store = store_factory()
    x = random_keys(3, seed=6)
    bad = x[2].copy()
    bad[3, 7] = np.nan
    with pytest.raises(InvalidArgument, match="key 2"):
        store.enroll(keys_of([x[0], x[1], bad]))
    for broken in (x[0][:17], x[0].astype(np.int32), np.full((18, 512), np.inf, np.float32)):
        with pytest.raises(InvalidArgument):
            store.enroll(keys_of([broken]))
    with pytest.raises(InvalidArgument, match="encoder_id"):
        store.enroll([NewKey(x[0], "")])
    with pytest.raises(InvalidArgument, match="boxes"):
        store.enroll([NewKey(x[0], "e", where=Where(boxes=np.array([[0, 1, 2, 0, 4]])))])
    with pytest.raises(InvalidArgument, match="t_end"):
        store.enroll([NewKey(x[0], "e", where=Where(t_start=5.0, t_end=1.0))])
    assert store.stats().keys == 0 and store.stats().next_key_id == 1


def test_full_map_is_resource_exhausted_and_loses_nothing(tmp_path):
    cfg = StoreConfig(map_size=2 << 20, durable=True)  # 2 MiB: room for a few dozen keys
    x = random_keys(200, seed=7)
    with KeyStore.open(tmp_path / "s", cfg) as store:
        stored = []
        with pytest.raises(ResourceExhausted, match="map is full"):
            for i in range(0, 200, 10):
                stored += [k.key_id for k in store.enroll(keys_of(x[i:i + 10]))]
        assert 0 < len(stored) < 200
        assert store.stats().keys == len(stored)
        for j, key_id in enumerate(stored):
            assert best(store, x[j]).key_id == key_id
        assert store.delete_key(stored[0]) == [stored[0]]  # still writable
    with KeyStore.open(tmp_path / "s", cfg) as store:
        assert store.stats().keys == len(stored) - 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(metric="cosine2"), "metric"), (dict(top_k=0), "top_k"), (dict(top_k=10**6), "top_k"),
    (dict(threshold=float("nan")), "threshold"),
])
def test_bad_queries(store_factory, kwargs, match):
    store = store_factory()
    x = random_keys(2, seed=8)
    store.enroll(keys_of(x))
    with pytest.raises(InvalidArgument, match=match):
        store.match(MatchQuery(probes=x[:1], encoder_id="enc", **kwargs))


def test_threshold_decision(store_factory):
    store = store_factory()
    x = random_keys(3, seed=9)
    store.enroll(keys_of(x))
    near = x[0] + 0.01
    r = store.match(MatchQuery.build(np.stack([near, -x[1]]), "enc", "all", "cosine", threshold=0.99))
    assert r.results[0].accepted and not r.results[1].accepted
    r = store.match(MatchQuery.build(near, "enc", "all", "l2", threshold=0.01))
    assert not r.results[0].accepted  # distance ~0.96 > 0.01
    assert r.results[0].hits[0].score == pytest.approx(0.01 * np.sqrt(18 * 512), rel=1e-3)


def test_list_identities_pages(store_factory):
    store = store_factory()
    x = random_keys(5, seed=10)
    store.enroll([NewKey(x[i], "enc", f"p{i % 3}") for i in range(5)])
    page, nxt = store.list_identities(limit=2)
    assert page == [("p0", 2), ("p1", 2)] and nxt == "p1"
    page, nxt = store.list_identities(after=nxt, limit=2)
    assert page == [("p2", 1)] and nxt == ""
