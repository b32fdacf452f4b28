"""Index snapshots: round trip without re-training, checked against LMDB (reconciled or rebuilt when they
disagree), corrupt snapshots rebuilt, and a crash mid-write leaves the previous snapshot usable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from facekeys.layers import parse_layers
from facekeys.store import KeyStore, MatchQuery, StoreConfig
from facekeys.store import snapshot
from facekeys.store.ann import AnnLayerIndex

from fkhelpers import enrol, oracle, random_keys


ANN = dict(index_mode="ann", ann_backend="pq", ann_train_min=1024, map_size=1 << 30, durable=False)


def top1(store, probes, subset="high:4", metric="l2"):
    r = store.match(MatchQuery.build(probes, "enc", subset, metric, top_k=3))
    return [[(h.key_id, h.score) for h in pr.hits] for pr in r.results]


def index_dirs(path):
    return sorted((path / "indexes").glob("idx-*"))


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    """A closed ann store of 1500 keys with a trained index and a snapshot, built once per module (training is
    most of the time); each test gets a copy (`built`)."""
    path = tmp_path_factory.mktemp("snapshot") / "s"
    gallery = random_keys(1500, seed=31)
    with KeyStore.open(path, StoreConfig(**ANN)) as store:
        ids = enrol(store, gallery)
        store._indexes["enc"].sync()
        before = top1(store, gallery[:4])
    return path, gallery, ids, before


@pytest.fixture
def built(built_once, tmp_path):
    """A private copy of the built store: (path, gallery, key ids, top-3 of the first 4 keys before closing)."""
    path, gallery, ids, before = built_once
    shutil.copytree(path, tmp_path / "s")
    return tmp_path / "s", gallery, ids, before


def test_round_trip_without_retraining(built, monkeypatch):
    path, gallery, ids, before = built
    monkeypatch.setattr(AnnLayerIndex, "_train", lambda self: pytest.fail("re-trained after restart"))
    with KeyStore.open(path, StoreConfig(**ANN)) as store:
        ix = store._indexes["enc"]
        assert ix.trained and ix.buffered == 0 and len(ix) == 1500
        assert top1(store, gallery[:4]) == before
        assert store.stats().keys == 1500 and store.stats().index_mode == "ann"
    assert len(index_dirs(path)) == 1


def test_stale_snapshot_is_brought_in_line_with_lmdb(built, monkeypatch):
    """Keys enrolled/deleted while the snapshot was not updated (as after a crash): reconciled, no re-train."""
    path, gallery, ids, _ = built
    extra = random_keys(30, seed=32)
    with KeyStore.open(path, StoreConfig(map_size=1 << 30, durable=False)) as exact:  # exact mode: no snapshot
        new_ids = enrol(exact, extra)
        exact.delete_key(ids[0])
        exact.delete_key(ids[1])
    monkeypatch.setattr(AnnLayerIndex, "_train", lambda self: pytest.fail("re-trained after restart"))
    with KeyStore.open(path, StoreConfig(**ANN)) as store:
        ix = store._indexes["enc"]
        assert len(ix) == 1500 - 2 + 30
        r = store.match(MatchQuery.build(extra[:3], "enc", "all", "cosine", top_k=1))
        assert [pr.hits[0].key_id for pr in r.results] == new_ids[:3]
        r = store.match(MatchQuery.build(gallery[:2], "enc", "all", "l2", top_k=5))
        assert not {ids[0], ids[1]} & {h.key_id for pr in r.results for h in pr.hits}


def test_disagreeing_snapshot_is_rebuilt(built):
    path, gallery, ids, _ = built
    extra = random_keys(1100, seed=33)  # more than max(1000, 5 %) keys differ: rebuild from LMDB
    with KeyStore.open(path, StoreConfig(map_size=1 << 30, durable=False)) as exact:
        new_ids = enrol(exact, extra)
    old = index_dirs(path)
    with KeyStore.open(path, StoreConfig(**ANN)) as store:
        ix = store._indexes["enc"]
        assert len(ix) == 2600 and ix.path not in old
        ix.sync()
        all_ids = ids + new_ids
        g32 = np.concatenate([gallery, extra])  # Match re-scores the float16 index's best from the float32 keys
        r = store.match(MatchQuery.build(extra[:3], "enc", "high:4", "l2", top_k=2))
        for probe, pr in zip(extra[:3], r.results):
            s = dict(zip(all_ids, oracle(g32, probe, parse_layers("high:4"), "l2")))
            assert pr.hits[0].score == pytest.approx(min(s.values()), abs=1e-9)
    assert [d.name for d in index_dirs(path)] == [ix.path.name]  # the stale directory is gone


def test_latents_changed_behind_the_snapshot_are_detected(built):
    """Same key ids, other vectors (e.g. a restored backup of another store): the content check rebuilds."""
    path, gallery, ids, _ = built
    d = index_dirs(path)[0]
    for layer in range(18):  # scribble over every stored vector
        f = d / "vectors" / f"layer{layer:02d}.f16"
        a = np.memmap(f, np.float16, "r+")
        a[: 1500 * 512] = 0.5
        a.flush()
        del a
    with KeyStore.open(path, StoreConfig(**ANN)) as store:
        assert store._indexes["enc"].path != d
        r = store.match(MatchQuery.build(gallery[:3], "enc", "high:4", "l2", top_k=1))
        assert [pr.hits[0].key_id for pr in r.results] == ids[:3]


@pytest.mark.parametrize("damage", ["columns", "faiss", "manifest", "current"])
def test_corrupt_snapshot_is_rebuilt_or_falls_back(built, damage):
    path, gallery, ids, before = built
    snaps = path / "indexes" / index_dirs(path)[0].name / "snapshots"
    snap = next(p for p in snaps.iterdir() if p.name.startswith("snap-"))
    if damage == "columns":
        f = snap / "columns.npz"
        f.write_bytes(f.read_bytes()[:-7] + b"garbage")
    elif damage == "faiss":
        f = next(snap.glob("s00-g*.faiss"))
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "manifest":
        (snap / "manifest.json").write_text("{not json")
    else:  # a torn CURRENT pointer: the newest complete snapshot is used
        (snaps / "CURRENT").write_text("snap-99999999")
    with KeyStore.open(path, StoreConfig(**ANN)) as store:
        assert len(store._indexes["enc"]) == 1500
        store._indexes["enc"].sync()
        assert [h[0][0] for h in top1(store, gallery[:4])] == [b[0][0] for b in before]
        if damage == "current":
            assert store._indexes["enc"].path.name == index_dirs(path)[0].name  # adopted, not rebuilt


def test_exception_mid_write_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    cfg = StoreConfig(**ANN)
    ix = AnnLayerIndex(cfg, tmp_path / "idx", background=False)
    x = random_keys(1200, seed=41)
    ix.add(np.arange(1, 1201), x, [snapshot_attrs(i) for i in range(1200)])
    ix.sync()
    first = ix.save_snapshot()
    ix.add(np.arange(2001, 2011), random_keys(10, seed=42), [snapshot_attrs(i) for i in range(10)])
    calls = {"n": 0}
    real = snapshot.faiss.write_index

    def failing(index, name):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        real(index, name)

    monkeypatch.setattr(snapshot.faiss, "write_index", failing)
    with pytest.raises(OSError):
        ix.save_snapshot()
    monkeypatch.setattr(snapshot.faiss, "write_index", real)
    ix.close(snapshot=False)
    again = AnnLayerIndex.load(cfg, tmp_path / "idx", background=False)
    assert len(again) == 1200 and again.trained
    assert snapshot.latest(tmp_path / "idx" / "snapshots")[0] == first
    again.add(np.arange(2001, 2011), random_keys(10, seed=42), [snapshot_attrs(i) for i in range(10)])
    again.save_snapshot()  # the debris of the failed write is cleaned up
    assert [p.name for p in (tmp_path / "idx" / "snapshots").iterdir() if p.is_dir()] == [
        snapshot.latest(tmp_path / "idx" / "snapshots")[0].name]
    again.close()


def snapshot_attrs(i):
    from facekeys.store.vectors import KeyAttrs

    return KeyAttrs(f"p{i}", "cam", 0.0, 0.0)


def test_killed_mid_write_leaves_old_snapshot_usable(tmp_path):
    """A process SIGKILLed (os._exit) in the middle of writing its second snapshot."""
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {str(tmp_path.parent.parent)!r})
        from facekeys.store import snapshot
        from facekeys.store.ann import AnnLayerIndex
        from facekeys.store.config import StoreConfig
        from facekeys.store.vectors import KeyAttrs
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((18, 512)) + 0.7 * rng.standard_normal((1300, 18, 512))).astype(np.float32)
        a = [KeyAttrs("p", "c", 0.0, 0.0)] * 1300
        ix = AnnLayerIndex(StoreConfig(index_mode="ann", ann_backend="pq", ann_train_min=1024),
                           {str(tmp_path / 'idx')!r},
                           background=False)
        ix.add(np.arange(1, 1201), x[:1200], a[:1200])
        ix.sync()
        ix.save_snapshot()
        ix.add(np.arange(1201, 1301), x[1200:], a[1200:])
        ix.sync()
        calls = [0]
        real = snapshot._fsync_path
        def dying(p):
            calls[0] += 1
            if calls[0] == 6:
                os._exit(137)  # like SIGKILL: no cleanup, no flush
            real(p)
        snapshot._fsync_path = dying
        ix.save_snapshot()
        print("not killed")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 137, out.stderr + out.stdout
    snaps = tmp_path / "idx" / "snapshots"
    assert any(p.name.startswith("tmp-") for p in snaps.iterdir())  # the torn write is there
    ix = AnnLayerIndex.load(StoreConfig(index_mode="ann", ann_backend="pq", ann_train_min=1024), tmp_path / "idx",
                            background=False)
    assert len(ix) == 1200 and ix.trained and ix.buffered == 0
    ix.close(snapshot=False)


def test_refine_codes_round_trip_and_another_width_is_refused(built):
    """The segments' refine codes come back from the snapshot as written; an index configured with another
    refine width or other groups refuses the snapshot (the KeyStore then rebuilds instead of searching with the
    wrong codes)."""
    path, gallery, ids, before = built
    (idx_dir,) = index_dirs(path)
    cfg = StoreConfig(**ANN)
    with KeyStore.open(path, cfg) as store:
        ix = store._indexes["enc"]
        seg = ix._segments[0]
        assert seg.refine is not None and seg.refine.shape == (1500, 18 * 64)
        written = seg.refine.copy()
    loaded = AnnLayerIndex.load(cfg, idx_dir, background=False)
    try:
        assert np.array_equal(loaded._segments[0].refine, written)
    finally:
        loaded.close(snapshot=False)
    with pytest.raises(snapshot.SnapshotError, match="other index settings"):
        AnnLayerIndex.load(StoreConfig(**ANN, ann_refine_m=64), idx_dir, background=False)
    with pytest.raises(snapshot.SnapshotError, match="other index settings"):
        AnnLayerIndex.load(StoreConfig(**ANN, ann_refine_m=0), idx_dir, background=False)
    old_groups = ("high:4", "high:8/32", "high:16/32", "9-16/32", "low:4", "low:2")  # the default before high:6/32
    with pytest.raises(snapshot.SnapshotError, match="other index settings"):
        AnnLayerIndex.load(StoreConfig(**ANN, ann_groups=old_groups), idx_dir, background=False)
    with KeyStore.open(path, StoreConfig(**ANN, ann_refine_m=0)) as store:  # rebuilt without refine codes
        store._indexes["enc"].sync()
        assert store._indexes["enc"]._segments[0].refine is None
        assert top1(store, gallery[:4]) == before
