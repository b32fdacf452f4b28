"""Exact search equals a brute-force numpy oracle (float64, concatenated layers), ties aside."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facekeys.layers import parse_layers
from facekeys.store import Filter, KeyStore, MatchQuery, StoreConfig

from fkhelpers import assert_topk_matches_oracle, enrol, oracle, random_keys


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("layers", ["high:1", "high:4", "high:9", "all", "low:3", "1,5,18"])
def test_exact_equals_oracle(store_factory, metric, layers):
    store = store_factory()
    gallery = random_keys(300, seed=1)
    ids = enrol(store, gallery)
    probes = gallery[:8] + 0.3 * random_keys(8, seed=2)
    r = store.match(MatchQuery.build(probes, "enc", layers, metric, top_k=10))
    sel = parse_layers(layers)
    for probe, pr in zip(probes, r.results):
        scores = dict(zip(ids, oracle(gallery, probe, sel, metric)))
        assert_topk_matches_oracle(pr.hits, scores, 10, metric)
    assert r.searched == 300


def test_chunked_scan_equals_oracle(store_factory, monkeypatch):
    """Galleries larger than one scan chunk merge partial top-k lists correctly."""
    from facekeys.store import vectors

    monkeypatch.setattr(vectors, "SCAN_CHUNK", 64)
    store = store_factory()
    gallery = random_keys(500, seed=3)
    ids = enrol(store, gallery)
    probes = gallery[[7, 250, 499]] + 0.2 * random_keys(3, seed=4)
    for metric in ("cosine", "l2"):
        r = store.match(MatchQuery.build(probes, "enc", "high:6", metric, top_k=25))
        for probe, pr in zip(probes, r.results):
            assert_topk_matches_oracle(pr.hits, dict(zip(ids, oracle(gallery, probe, range(6), metric))), 25, metric)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40),
    layer_list=st.lists(st.integers(1, 18), min_size=1, max_size=18),
    metric=st.sampled_from(["cosine", "l2"]),
    k=st.integers(1, 12),
    dup=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_property_random_subsets(tmp_path_factory, n, layer_list, metric, k, dup, seed):
    """Random subsets, sizes and duplicated keys (exact ties) against the oracle."""
    base = random_keys(n, seed=seed)
    gallery = np.concatenate([base, base[: min(dup, n)]])  # duplicates create exact ties
    probe = base[seed % n] + 0.5 * random_keys(1, seed=seed + 1)[0]
    config = StoreConfig(map_size=1 << 28, durable=False)
    with KeyStore.open(tmp_path_factory.mktemp("prop"), config) as store:
        ids = enrol(store, gallery)
        r = store.match(MatchQuery.build(probe, "enc", layer_list, metric, top_k=k))
    scores = dict(zip(ids, oracle(gallery, probe, parse_layers(layer_list), metric)))
    assert_topk_matches_oracle(r.results[0].hits, scores, k, metric)


def test_ties_break_by_key_id(store_factory):
    store = store_factory()
    key = random_keys(1, seed=5)[0]
    ids = enrol(store, np.stack([key] * 5))
    r = store.match(MatchQuery.build(key, "enc", "all", "l2", top_k=5))
    assert [h.key_id for h in r.results[0].hits] == sorted(ids)
    assert all(h.score == pytest.approx(0.0, abs=1e-9) for h in r.results[0].hits)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_filters_equal_oracle_on_subset(store_factory, metric):
    store = store_factory()
    n = 400
    gallery = random_keys(n, seed=6)
    rng = np.random.default_rng(7)
    cams = [f"cam{c}" for c in rng.integers(0, 4, n)]
    idents = [f"p{c}" for c in rng.integers(0, 50, n)]
    t0 = rng.uniform(0, 1000, n)
    times = [(a, a + 10) for a in t0]
    ids = np.array(enrol(store, gallery, idents, cams, times))
    probe = gallery[3] + 0.4 * random_keys(1, seed=8)[0]
    cases = [
        (Filter(camera_ids=("cam1",)), np.array([c == "cam1" for c in cams])),
        (Filter(camera_ids=("cam1", "cam3")), np.array([c in ("cam1", "cam3") for c in cams])),
        (Filter(identity_ids=("p7",)), np.array([i == "p7" for i in idents])),  # very selective: gather path
        (Filter(t_from=200.0, t_to=300.0), (t0 + 10 >= 200) & (t0 <= 300)),
        (Filter(camera_ids=("cam0",), t_from=500.0), np.array([c == "cam0" for c in cams]) & (t0 + 10 >= 500)),
        (Filter(camera_ids=("nope",)), np.zeros(n, bool)),
    ]
    for flt, mask in cases:
        r = store.match(MatchQuery.build(probe, "enc", "high:4", metric, top_k=5, filter=flt))
        assert r.searched == mask.sum()
        if mask.sum() == 0:
            assert r.results[0].hits == () and not r.results[0].accepted
            continue
        scores = dict(zip(ids[mask].tolist(), oracle(gallery[mask], probe, range(4), metric)))
        assert_topk_matches_oracle(r.results[0].hits, scores, 5, metric)


@pytest.mark.parametrize("kernel,wake", [("c", None), ("c", 0), ("c", 1 << 40), ("faiss", None)])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_one_probe_path_after_deletes_equals_oracle(store_factory, monkeypatch, metric, kernel, wake):
    """A single probe takes the one-probe scan (the C kernel, or FAISS' SIMD dot without it; not BLAS):
    shared out between the scan threads (the caller's share larger by WAKE_BYTES: as set, equal shares, or
    every row while the other share is empty), after deletions compacted the rows, and with an all-zero key
    (cosine scores it 0, never NaN)."""
    from facekeys.store import vectors

    if kernel == "c" and vectors._f16dot is None:
        pytest.skip("C kernel not built (pip install -e . builds it)")
    if kernel == "faiss":
        monkeypatch.setattr(vectors, "_f16dot", None)
    if wake is not None:
        monkeypatch.setattr(vectors, "WAKE_BYTES", wake)
    monkeypatch.setattr(vectors, "MIN_JOB_BYTES", 1)  # every scan thread takes a share, however small
    store = store_factory()
    gallery = random_keys(700, seed=11)
    gallery[5] = 0.0
    ids = np.array(enrol(store, gallery))
    gone = ids[::7]
    for key_id in gone:
        store.delete_key(int(key_id))
    keep = ~np.isin(ids, gone)
    probe = gallery[300] + 0.3 * random_keys(1, seed=12)[0]
    for layers in ("high:1", "high:5", "low:2", "1,9,18", "all"):
        sel = parse_layers(layers)
        r = store.match(MatchQuery.build(probe, "enc", layers, metric, top_k=15))
        with np.errstate(divide="ignore", invalid="ignore"):
            want = np.nan_to_num(oracle(gallery[keep], probe, sel, metric))
        assert_topk_matches_oracle(r.results[0].hits, dict(zip(ids[keep].tolist(), want)), 15, metric)
        assert r.searched == keep.sum()


def test_smallest_k_equals_sort_with_inf_nan_and_short_rows():
    from facekeys.store.vectors import smallest_k

    rng = np.random.default_rng(13)
    cost = rng.standard_normal((5, 300)).astype(np.float32)
    cost[1, ::3] = np.inf  # masked-out rows
    cost[2, 10:20] = np.nan
    cost[3, :] = np.inf
    cost[3, [4, 9]] = [0.5, -0.5]  # only two selectable entries
    cost[4, 50:60] = cost[4, 7]  # ties
    pos, vals = smallest_k(cost, 12)
    for i in range(5):
        ok = np.isfinite(cost[i])
        want = np.sort(cost[i][ok])[:12]
        got = pos[i][pos[i] >= 0]
        assert len(got) == len(want)
        np.testing.assert_array_equal(vals[i][: len(got)], want)
        np.testing.assert_array_equal(cost[i][got], want)
        assert len(set(got.tolist())) == len(got)
    assert (pos[3][2:] == -1).all()
    pos, vals = smallest_k(cost[:, :4], 12)  # k beyond the row length
    assert pos.shape == (5, 4)
    shifted, _ = smallest_k(cost, 12, first=1000)  # positions numbered from `first`; padding stays -1
    np.testing.assert_array_equal(shifted, np.where(smallest_k(cost, 12)[0] >= 0, smallest_k(cost, 12)[0] + 1000, -1))


def _anon_huge_kib(start: int, stop: int) -> int | None:
    """AnonHugePages (KiB) of the mappings overlapping [start, stop), from /proc/self/smaps; None if unreadable.
    (numpy advises the 2 MiB-aligned interior of a buffer, which the kernel splits into its own mapping.)"""
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    total, inside = 0, False
    for line in lines:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo < stop and start < hi
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1])
    return total


def test_flat_index_grows_compacts_and_keeps_rows_on_huge_pages():
    """Adds that outgrow the capacity several times, deletions that compact the rows, more adds: every layer's
    rows stay exact (oracle), and the float32 rows sit on 2 MiB pages where the kernel offers them."""
    from types import SimpleNamespace

    from facekeys.store.vectors import FlatLayerIndex, KeyAttrs

    idx = FlatLayerIndex(threads=2)
    gallery = random_keys(3600, seed=21)
    attrs = [KeyAttrs(f"id{i}", "cam", 0.0, 0.0) for i in range(len(gallery))]
    bounds = [0, 1, 1001, 1700, 3200]  # crosses capacities 1024 and 2048
    for a, b in zip(bounds, bounds[1:]):
        idx.add(np.arange(a, b), gallery[a:b], attrs[a:b])
    idx.remove(np.arange(0, 3200, 5))
    idx.add(np.arange(3200, 3600), gallery[3200:], attrs[3200:])
    alive = np.array([i for i in range(3600) if i >= 3200 or i % 5], np.int64)
    assert len(idx) == len(alive)
    probes = gallery[[3, 1500, 3500]] + 0.3 * random_keys(3, seed=22)
    for layers in ("high:1", "high:4", "1,9,18", "all"):
        sel = parse_layers(layers)
        for metric in ("cosine", "l2"):
            res = idx.search(probes, sel, metric, 10, Filter())
            for i, probe in enumerate(probes):
                hits = [SimpleNamespace(key_id=int(k), score=float(s)) for k, s in zip(res.ids[i], res.scores[i])]
                want = dict(zip(alive.tolist(), oracle(gallery[alive], probe, sel, metric)))
                assert_topk_matches_oracle(hits, want, 10, metric)
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read() if sys.platform == "linux" else "[never]"
    rows = idx._layer(0, len(idx))
    huge = _anon_huge_kib(rows.ctypes.data, rows.ctypes.data + rows.nbytes)
    if "[never]" in thp or huge is None:
        pytest.skip(f"transparent huge pages unavailable here ({thp.strip()})")
    assert huge >= 2048, "the float32 rows should be on 2 MiB pages (numpy advises them; THP madvise or always)"
