"""The flat candidate backend (store/flat.py): exact float16 inner products of all 18 layers plus norm columns,
on the GPU where the FAISS GPU build sees one (then these tests exercise `GpuIndexFlatIP`, see
benchmarks/device/faiss_gpu.sh), else FAISS' CPU float16 flat index. Every returned score is still the
oracle's exact value; the l2 candidates come in the metric's exact order."""

from __future__ import annotations

import numpy as np
import pytest

from facekeys.bench.synthetic import SyntheticConfig, make_workload
from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument
from facekeys.layers import parse_layers
from facekeys.records import MatchQuery, NewKey
from facekeys.store import Filter, StoreConfig
from facekeys.store.ann import AnnLayerIndex, resolve_backend
from facekeys.store.flat import D_FLAT, NORM_SCALE, TAU, FlatCandidates, flat_probe, gpu_count, norm_columns
from facekeys.store.snapshot import SnapshotError

from fkhelpers import attrs, check_exact, f16, oracle, random_keys

FLAT = dict(index_mode="ann", ann_backend="flat", ann_train_min=1024, ann_merge_idle_s=0.05, ann_exact_bytes=0)
BACKEND = "flat-gpu" if gpu_count() > 0 else "flat-cpu"
SUBSETS = ("high:1", "high:4", "high:9", "all", "1,5,18")


def test_norm_columns_hold_the_norm_in_float16_parts():
    rng = np.random.default_rng(0)
    norm2 = (rng.uniform(0, 5000, (64, N_LAYERS)) * rng.uniform(0.01, 3, (64, 1))).astype(np.float32)
    norm2[0, 0] = 0.0
    cols = norm_columns(norm2)  # (64, 54)
    assert cols.shape == (64, N_LAYERS * 3) and cols.dtype == np.float32
    assert np.array_equal(cols.astype(np.float16).astype(np.float32), cols)  # float16 holds them exactly
    back = cols.reshape(64, N_LAYERS, 3).astype(np.float64).sum(2) / NORM_SCALE
    # three parts: float32-like precision, down to float16's subnormal step (2**-24) times 1 / NORM_SCALE
    np.testing.assert_allclose(back, norm2.astype(np.float64), rtol=2e-9, atol=2.0**-25 / NORM_SCALE)
    huge = norm_columns(np.full((1, N_LAYERS), 1e12, np.float32))
    assert np.isfinite(huge).all() and huge.reshape(N_LAYERS, 3)[:, 0].max() == 65504.0  # clamped, not inf


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_flat_probe_scores_against_the_oracle(metric):
    """<probe, row'> is <q_S, x_S> - lam ||x_S||^2 (cosine; lam = TAU ||q_S|| / (2 r_S)) or 2 <q_S, x_S> - ||x_S||^2
    (l2), row' = values + norm columns."""
    x = f16(random_keys(5, seed=1))
    q = random_keys(2, seed=2)
    lay = parse_layers("1,5,18")
    rows = np.concatenate([x.reshape(5, -1), norm_columns(np.einsum("nld,nld->nl", x, x))], 1)
    assert rows.shape == (5, D_FLAT)
    mean_norm2 = np.arange(1.0, 19.0) * 30.0  # r_S^2 = (1 + 5 + 18) * 30
    p = flat_probe(np.ascontiguousarray(q[:, lay]), lay, metric, mean_norm2)
    got = p.astype(np.float64) @ rows.T.astype(np.float64)  # (2, 5)
    ip = np.einsum("qld,nld->qn", q[:, lay].astype(np.float64), x[:, lay].astype(np.float64))
    nx2 = np.einsum("nld,nld->n", x[:, lay], x[:, lay])[None].astype(np.float64)
    if metric == "l2":
        want = 2 * ip - nx2
    else:
        lam = TAU * np.linalg.norm(q[:, lay].reshape(2, -1).astype(np.float64), axis=1) / (2 * np.sqrt(24 * 30.0))
        want = ip - lam[:, None] * nx2
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)
    outside = np.ones(D_FLAT, bool)
    for layer in lay:
        outside[layer * DIM : (layer + 1) * DIM] = False
        outside[N_LAYERS * DIM + 3 * layer : N_LAYERS * DIM + 3 * layer + 3] = False
    assert not p[:, outside].any()


def _flat_index(scale_spread: float):
    data = make_workload(SyntheticConfig(identities=3000, seed=5))
    rng = np.random.default_rng(6)
    scale = rng.uniform(1 / scale_spread, scale_spread, (len(data.gallery), 1, 1))
    gallery = (data.gallery * scale).astype(np.float32)
    probes = gallery[:40] + 0.2 * random_keys(40, seed=7)
    ix = AnnLayerIndex(StoreConfig(**FLAT), None, background=False)
    ids = np.arange(1, len(gallery) + 1, dtype=np.int64)
    ix.add(ids, gallery, attrs(len(ids)))
    ix.sync()
    assert ix.backend == BACKEND and ix.trained and ix.buffered == 0 and ix._segments[0].flat is not None
    return ix, gallery, probes, ids


@pytest.fixture(scope="module")
def flat_gallery():
    """A flat-backend index over synthetic pSp-like keys (their layer norms concentrate, as real latents')."""
    ix, *rest = _flat_index(1.0)
    yield (ix, *rest)
    ix.close()


@pytest.fixture(scope="module")
def spread_gallery():
    """The same keys scaled by 0.5..2: inner-product order is then far from l2 order."""
    ix, *rest = _flat_index(2.0)
    yield (ix, *rest)
    ix.close()


def test_auto_backend_is_pq_without_a_gpu():
    want = "flat-gpu" if gpu_count() > 0 else "pq"
    assert resolve_backend(StoreConfig(index_mode="ann")) == want
    assert resolve_backend(StoreConfig(index_mode="ann", ann_backend="pq")) == "pq"
    assert resolve_backend(StoreConfig(index_mode="ann", ann_backend="flat")) == BACKEND
    with pytest.raises(InvalidArgument):
        StoreConfig(ann_backend="gpu")


def test_flat_l2_candidates_are_in_exact_order(spread_gallery):
    """With only k + rerank_extra candidates the l2 answer is the exact top k although the norms vary 4x: the
    norm columns put the candidates in l2 order (inner products alone would not)."""
    ix, gallery, probes, ids = spread_gallery
    g16 = f16(gallery)
    kk = 10 + ix.config.rerank_extra
    for subset in SUBSETS:
        lay = parse_layers(subset)
        r = ix.search(probes[:20], lay, "l2", 10, Filter(), candidates=kk)
        check_exact(r, g16, ids, probes[:20], lay, "l2", 10)


def test_flat_cosine_finds_the_exact_top1(flat_gallery):
    """Cosine candidates by the linearised score (TAU): with only k + rerank_extra candidates the exact top 1 of
    every probe, recall@10 >= 0.95, and exact scores."""
    ix, gallery, probes, ids = flat_gallery
    g16 = f16(gallery)
    kk = 10 + ix.config.rerank_extra
    for subset in SUBSETS:
        lay = parse_layers(subset)
        c = ix.search(probes, lay, "cosine", 10, Filter(), candidates=kk)
        ex = ix.search(probes, lay, "cosine", 10, Filter(), exact=True)
        assert np.array_equal(c.ids[:, 0], ex.ids[:, 0]), subset
        assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(c.ids, ex.ids)]) >= 0.95, subset
        for i, probe in enumerate(probes[:5]):
            np.testing.assert_allclose(c.scores[i], oracle(g16, probe, lay, "cosine")[c.ids[i] - 1], rtol=1e-10)


def test_flat_filters(flat_gallery):
    """A broad filter (one camera) and a very selective one (two identities): the candidates grow with 1 / the
    admitted share (up to ann_max_candidates; the GPU returns at most 2,048) and the excluded are dropped."""
    ix, gallery, probes, ids = flat_gallery
    g16 = f16(gallery)
    a = attrs(len(ids))
    lay = parse_layers("high:4")
    for flt in (Filter(camera_ids=("cam1",)), Filter(identity_ids=("p7", "p9"))):
        admitted = np.array([(not flt.camera_ids or x.camera_id in flt.camera_ids)
                             and (not flt.identity_ids or x.identity_id in flt.identity_ids) for x in a])
        for metric in ("l2", "cosine"):
            r = ix.search(probes[:6], lay, metric, 5, flt, candidates=2000)
            check_exact(r, g16, ids, probes[:6], lay, metric, min(5, int(admitted.sum())), admitted)


def test_more_candidates_than_the_gpu_returns_scan_exactly(flat_gallery, monkeypatch):
    """Asking a segment for more candidates than it can return (the GPU's k limit, emulated here with a limit
    of 64) scans the admitted rows exactly instead of returning fewer candidates."""
    ix, gallery, probes, ids = flat_gallery
    scanned = []
    real_scan = AnnLayerIndex._scan

    def scan(self, q_all, lay, metric, kk, rows):
        scanned.append(len(rows) if not isinstance(rows, slice) else rows.stop - rows.start)
        return real_scan(self, q_all, lay, metric, kk, rows)

    monkeypatch.setattr(AnnLayerIndex, "_scan", scan)
    monkeypatch.setattr(FlatCandidates, "max_k", property(lambda self: min(64, self.ntotal)))
    lay = parse_layers("high:6")
    ix.search(probes[:3], lay, "cosine", 5, Filter(), candidates=64)
    assert len(gallery) not in scanned  # within the limit: candidates only (single-probe pool scans)
    r = ix.search(probes[:3], lay, "cosine", 5, Filter(), candidates=65)
    assert len(gallery) in scanned
    check_exact(r, f16(gallery), ids, probes[:3], lay, "cosine", 5)
    flt = Filter(camera_ids=("cam2",))  # ~25 %: 64 candidates over-fetched to 256 > 64
    admitted = np.array([x.camera_id == "cam2" for x in attrs(len(ids))])
    scanned.clear()
    r = ix.search(probes[:3], lay, "l2", 5, flt, candidates=64)
    assert int(admitted.sum()) in scanned
    check_exact(r, f16(gallery), ids, probes[:3], lay, "l2", 5, admitted)


def test_flat_merges_compaction_snapshot_and_reload(tmp_path):
    cfg = StoreConfig(**FLAT, ann_max_segments=2)
    x = random_keys(1300, seed=31)
    ix = AnnLayerIndex(cfg, tmp_path / "idx", background=False)
    ix.add(np.arange(1, 1101), x[:1100], attrs(1100, 1))
    ix.sync()
    for b in range(3):
        s = 1100 + 50 * b
        ix.add(np.arange(s + 1, s + 51), x[s : s + 50], attrs(50, 2 + b))
        ix.work_once(force=True)
    assert len(ix._segments) == 4 and all(s.flat is not None for s in ix._segments)
    ix.remove(np.array([1101, 1151]))
    ix.sync()
    assert len(ix._segments) <= 2
    probes = x[[1102, 1160, 1210, 5, 1100, 1150]]
    lay = parse_layers("high:6")
    before = ix.search(probes, lay, "l2", 3, Filter())
    assert before.ids[:, 0].tolist()[:4] == [1103, 1161, 1211, 6]
    assert not {1101, 1151} & set(before.ids.ravel().tolist())
    check_exact(before, f16(x), np.arange(1, 1301), probes, lay, "l2", 3,
                ~np.isin(np.arange(1, 1301), [1101, 1151]))
    ix.close()  # snapshot: rows only, the flat indexes are rebuilt at load
    back = AnnLayerIndex.load(cfg, tmp_path / "idx", background=False)
    try:
        assert back.backend == BACKEND and all(s.flat is not None for s in back._segments)
        again = back.search(probes, lay, "l2", 3, Filter())
        assert np.array_equal(again.ids, before.ids) and np.array_equal(again.scores, before.scores)
    finally:
        back.close(snapshot=False)
    with pytest.raises(SnapshotError, match="backend"):  # a flat snapshot is no PQ index
        AnnLayerIndex.load(StoreConfig(**dict(FLAT, ann_backend="pq")), tmp_path / "idx", background=False)


def test_keystore_stats_report_the_flat_backend(store_factory):
    store = store_factory(**dict(FLAT, ann_train_min=1024))
    gallery = random_keys(1100, seed=41)
    store.enroll([NewKey(x, "enc") for x in gallery])
    store._indexes["enc"].sync()
    s = store.stats()
    assert (s.index_mode, s.ann_backend) == ("ann", BACKEND)
    assert s.gpu_index_bytes == (1100 * D_FLAT * 2 if BACKEND == "flat-gpu" else 0)
    r = store.match(MatchQuery.build(gallery[:3], "enc", "high:4", "l2", top_k=1))
    assert [p.hits[0].key_id for p in r.results] == [1, 2, 3]
