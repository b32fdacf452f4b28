"""The float16 scan kernels: the C extension `facekeys.store._f16dot` (every SIMD variant this CPU runs, and its
portable C path) equals the numpy fallback and a float64 oracle; the float16 exact store returns the oracle's
exact answers with the extension and without it."""

from __future__ import annotations

import numpy as np
import pytest

from facekeys.dims import DIM
from facekeys.layers import parse_layers
from facekeys.store import Filter, MatchQuery
from facekeys.store import ann
from facekeys.store.ann import _SCALE, _dot_numpy

from fkhelpers import assert_topk_matches_oracle, check_exact, enrol, oracle, random_keys


needs_c = pytest.mark.skipif(ann._f16dot is None, reason="C kernel not built (pip install -e . builds it)")
KERNELS = ann._f16dot.kernels() if ann._f16dot is not None else ()


def hard_f16(rng, rows: int, dim: int = DIM) -> np.ndarray:
    """float16 rows mixing ordinary values, subnormals, zeros, signed zeros and values near +-65504."""
    x = rng.standard_normal((rows, dim)).astype(np.float16)
    bits = rng.integers(0, 1 << 16, (rows, dim), dtype=np.uint16)
    subnormal = (bits & 0x83FF).view(np.float16)  # exponent 0: subnormals and +-0
    big = (rng.choice([-1, 1], (rows, dim)) * rng.uniform(30000, 65504, (rows, dim))).astype(np.float16)
    pick = rng.integers(0, 8, (rows, dim))
    x = np.where(pick == 0, subnormal, x)
    x = np.where(pick == 1, big, x)
    return np.where(pick == 2, np.float16(-0.0), x)


def f64_oracle(q: np.ndarray, layers, rows) -> np.ndarray:
    """(Q, m) float64 sum over layers of <q_l, x_l[rows]>."""
    return sum(q[:, l, :].astype(np.float64) @ x[rows].astype(np.float64).T for l, x in enumerate(layers))


def selection_outputs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """pos/vals arrays for a C selection call, filled with sentinels (-7, 9.5) that must survive past its count."""
    return np.full(k, -7, np.int64), np.full(k, 9.5, np.float32)


def assert_selected(got: int, pos, vals, cost, want) -> None:
    """The call selected exactly `want` (oracle order) with their costs, and left the rest untouched."""
    assert got == len(want)
    np.testing.assert_array_equal(pos[:got], want)
    np.testing.assert_array_equal(vals[:got], cost[want])
    assert (pos[got:] == -7).all() and (vals[got:] == 9.5).all()


def tolerance(q, layers, rows) -> np.ndarray:
    """float32 accumulation bound: a few ulps of the sum of |products| per output."""
    mag = sum(np.abs(q[:, l, :]).astype(np.float64) @ np.abs(x[rows].astype(np.float64)).T
              for l, x in enumerate(layers))
    return 2e-6 * mag + 1e-30


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("nq,n_layers,m", [(1, 1, 1), (1, 3, 77), (1, 18, 131), (2, 4, 65), (3, 2, 63),
                                           (4, 5, 64), (5, 1, 129), (9, 6, 33)])
def test_c_kernel_equals_numpy_and_float64(kernel, nq, n_layers, m):
    rng = np.random.default_rng([nq, n_layers, m])
    cap = m + 40
    layers = [hard_f16(rng, cap) for _ in range(n_layers)]
    q = rng.standard_normal((nq, n_layers, DIM)).astype(np.float32)
    q[:, :, :7] *= 1e-3
    for rows in (slice(17, 17 + m), np.sort(rng.choice(cap, m, replace=False)), rng.integers(0, cap, m)):
        idx = np.arange(cap)[rows]
        want = f64_oracle(q, layers, idx)
        tol = tolerance(q, layers, idx)
        got = np.full((nq, m), np.nan, np.float32)
        if isinstance(rows, slice):
            ann._f16dot.dot(got, q, layers, rows.start, rows.stop, kernel=kernel)
        else:
            ann._f16dot.dot(got, q, layers, rows, kernel=kernel)
        assert np.all(np.abs(got - want) <= tol), (kernel, np.abs(got - want).max())
        qs = [np.ascontiguousarray(q[:, l, :] * _SCALE) for l in range(n_layers)]
        fallback = _dot_numpy(layers, qs, rows, m)
        assert np.all(np.abs(fallback - want) <= tol)
        assert np.all(np.abs(got - fallback) <= 2 * tol)
        if nq == 1:  # the (m,) output and (L, dim) probe forms
            flat = np.empty(m, np.float32)
            ann._f16dot.dot(flat, q[0], layers, idx, kernel=kernel)
            np.testing.assert_allclose(flat, got[0], rtol=0, atol=float(tol.max()))


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
def test_c_kernel_any_width_and_every_f16_value(kernel):
    """Every finite float16 bit pattern, against one-hot probes (exact), and row widths that are not a
    multiple of the SIMD width (the scalar path takes them)."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[np.isfinite(h)]
    h = np.concatenate([h, np.zeros((-len(h)) % DIM, np.float16)]).reshape(-1, DIM)
    for d in (0, 5, 511):
        q = np.zeros((1, 1, DIM), np.float32)
        q[0, 0, d] = 1.0
        out = np.empty((1, len(h)), np.float32)
        ann._f16dot.dot(out, q, [h], 0, len(h), kernel=kernel)
        assert np.array_equal(out[0], h[:, d].astype(np.float32))
    rng = np.random.default_rng(5)
    for dim in (1, 24, 40, 520):
        layers = [hard_f16(rng, 30, dim) for _ in range(2)]
        q = rng.standard_normal((3, 2, dim)).astype(np.float32)
        got = np.empty((3, 11), np.float32)
        ann._f16dot.dot(got, q, layers, 7, 18, kernel=kernel)
        idx = np.arange(7, 18)
        assert np.all(np.abs(got - f64_oracle(q, layers, idx)) <= tolerance(q, layers, idx))


@needs_c
def test_c_kernel_rejects_bad_arguments():
    dot = ann._f16dot.dot
    x = np.zeros((10, DIM), np.float16)
    q = np.zeros((1, 1, DIM), np.float32)
    out = np.zeros((1, 4), np.float32)
    dot(out, q, [x], 6, 10)  # fine
    dot(out, q, [x], np.array([0, 9, 3, 3]))
    dot(np.zeros((1, 0), np.float32), q, [x], np.zeros(0, np.int64))
    bad = [
        ((out, q, [x], 7, 11), IndexError),  # past the rows
        ((out, q, [x], -1, 3), IndexError),
        ((out, q, [x], np.array([0, 10, 1, 2])), IndexError),
        ((out, q, [x], np.array([0, 1, 2, 3], np.int32)), TypeError),
        ((out, q, [x], 0, 5), ValueError),  # out too small/large
        ((out, q, [x.astype(np.float64)], 0, 4), TypeError),  # rows are float16 or float32
        ((out, q, [x[:, :256]], 0, 4), TypeError),  # not contiguous
        ((out, q, [x, x], 0, 4), ValueError),  # layers vs q
        ((out.astype(np.float64), q, [x], 0, 4), TypeError),
        ((out, q.astype(np.float64), [x], 0, 4), TypeError),
        ((out, q, [x], 0), IndexError),  # a plain start without stop
    ]
    for args, exc in bad:
        with pytest.raises(exc):
            dot(*args)
    with pytest.raises(ValueError):
        dot(out, q, [x], 0, 4, kernel="no-such-kernel")
    ro = np.zeros((1, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(TypeError):
        dot(ro, q, [x], 0, 4)


def test_kernel_flag_names_the_kernel_in_use():
    assert ann.F16_KERNEL == ("numpy" if ann._f16dot is None else f"c-{ann._f16dot.KERNEL}")
    if ann._f16dot is not None:
        assert ann._f16dot.KERNEL == KERNELS[0] and KERNELS[-1] == "scalar"


@pytest.mark.parametrize("kernel", ["c", "numpy"])
def test_float16_exact_store_equals_oracle_with_and_without_c(store_factory, monkeypatch, kernel):
    if kernel == "c" and ann._f16dot is None:
        pytest.skip("C kernel not built")
    if kernel == "numpy":
        from facekeys.store import vectors

        monkeypatch.setattr(ann, "_f16dot", None)
        monkeypatch.setattr(vectors, "_f16dot", None)  # the float64 re-rank too
        monkeypatch.setattr(ann, "SMALL_BATCH", 2)  # the batch goes through BLAS, one probe through FAISS' dot
    monkeypatch.setattr(ann, "SCAN_CHUNK", 300)  # several chunks per scan part, merged by the heap
    store = store_factory(vector_dtype="float16")
    gallery = random_keys(1001, seed=31)  # odd count: parts and chunks of uneven size
    ids = enrol(store, gallery)
    store.delete_key(ids[3])  # deleted rows are skipped (the scan then gathers the admitted rows)
    store.delete_key(ids[500])
    g16 = gallery.astype(np.float16).astype(np.float32)
    probes = gallery[[0, 250, 999, 1000]] + 0.3 * random_keys(4, seed=32)
    ix = store._indexes["enc"]
    alive = set(ix.alive_ids().tolist())
    admitted = np.array([k in alive for k in ids])
    for subset in ("high:1", "high:4", "all", "1,5,18"):
        layers = parse_layers(subset)
        for metric in ("cosine", "l2"):
            for batch in (probes[:1], probes):  # one probe, and a batch
                # the index: the float16 oracle; Match: the float32 one (its best re-scored from LMDB)
                r = ix.search(batch, layers, metric, 7, Filter())
                check_exact(r, g16, np.array(ids), batch, layers, metric, 7, admitted)
                m = store.match(MatchQuery.build(batch, "enc", subset, metric, top_k=7))
                for probe, pr in zip(batch, m.results):
                    scores = {k: s for k, s in zip(ids, oracle(gallery, probe, layers, metric)) if k in alive}
                    assert_topk_matches_oracle(pr.hits, scores, 7, metric, tol=1e-9)


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("nq,n_layers,m", [(1, 1, 1), (1, 3, 77), (1, 18, 131), (1, 2, 2051), (2, 4, 65), (5, 2, 63)])
def test_c_kernel_float32_rows_equal_float64_oracle(kernel, nq, n_layers, m):
    """float32 layers (the exact float32 index's one-probe scan) take the same kernels without conversion."""
    rng = np.random.default_rng(nq * 1000 + n_layers * 10 + m)
    layers = [rng.standard_normal((m + 7, DIM)).astype(np.float32) for _ in range(n_layers)]
    q = rng.standard_normal((nq, n_layers, DIM)).astype(np.float32)
    for rows in (np.arange(5, 5 + m), rng.integers(0, m + 7, m)):
        out = np.empty((nq, m), np.float32)
        if rows[0] == 5 and np.all(np.diff(rows) == 1):
            ann._f16dot.dot(out, q, layers, 5, 5 + m, kernel=kernel)
        else:
            ann._f16dot.dot(out, q, layers, rows, kernel=kernel)
        want = sum(q[:, l, :].astype(np.float64) @ x[rows].astype(np.float64).T for l, x in enumerate(layers))
        mag = sum(np.abs(q[:, l, :]).astype(np.float64) @ np.abs(x[rows]).astype(np.float64).T
                  for l, x in enumerate(layers))
        assert (np.abs(out - want) <= 2e-6 * mag + 1e-30).all()


@needs_c
def test_c_kernel_refuses_mixed_row_types():
    q = np.ones((2, DIM), np.float32)
    with pytest.raises(TypeError, match="float32"):
        ann._f16dot.dot(np.empty(4, np.float32), q, [np.ones((4, DIM), np.float32), np.ones((4, DIM), np.float16)],
                        0, 4)


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n_layers", [1, 4, 18])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_c_kernel_costs_equal_the_numpy_costs(kernel, metric, n_layers, dtype):
    """dot(..., norms=, metric=) forms the scan's costs in the kernel, over a row range or listed rows, float32
    or float16 rows: the same float32 operations as numpy's `_costs` on the kernel's inner products, so the very
    same values (zero-norm keys cost 0, never NaN)."""
    from facekeys.store.vectors import _costs

    rng = np.random.default_rng(n_layers)
    n = 300
    layers = [rng.standard_normal((n, DIM)).astype(dtype) for _ in range(n_layers)]
    for x in layers:
        x[[3, 250]] = 0.0
    norm2 = [np.einsum("nd,nd->n", x, x, dtype=np.float32) for x in layers]
    q = rng.standard_normal((n_layers, DIM)).astype(np.float32)
    listed = np.array([250, 7, 299, 3, 100, 7], np.int64)
    for where in ((0, n), (7, 251), (250, 251), (listed,)):
        rows = slice(*where) if len(where) == 2 else where[0]
        m = rows.stop - rows.start if len(where) == 2 else len(rows)
        ip = np.empty(m, np.float32)
        ann._f16dot.dot(ip, q, layers, *where, kernel=kernel)
        want = _costs(ip[None].copy(), norm2, rows, metric)[0]
        got = np.empty(m, np.float32)
        ann._f16dot.dot(got, q, layers, *where, kernel=kernel, norms=norm2, metric=metric)
        np.testing.assert_array_equal(got, want)
        assert np.isfinite(got).all()
        assert (got[np.arange(n)[rows] == 250] == 0.0).all()


@needs_c
def test_c_kernel_costs_refuse_bad_arguments():
    x = np.ones((8, DIM), np.float32)
    q = np.ones((1, DIM), np.float32)
    out = np.empty(8, np.float32)
    norms = [np.ones(8, np.float32)]
    with pytest.raises(ValueError, match="together"):
        ann._f16dot.dot(out, q, [x], 0, 8, norms=norms)
    with pytest.raises(ValueError, match="metric"):
        ann._f16dot.dot(out, q, [x], 0, 8, norms=norms, metric="dot")
    with pytest.raises(ValueError, match="at least 8"):
        ann._f16dot.dot(out, q, [x], 0, 8, norms=[np.ones(5, np.float32)], metric="l2")
    with pytest.raises(ValueError, match="at least 8"):  # listed rows: up to the largest
        ann._f16dot.dot(out[:2], q, [x], np.array([1, 7]), norms=[np.ones(5, np.float32)], metric="l2")
    with pytest.raises(ValueError, match="norms has 2"):
        ann._f16dot.dot(out, q, [x], 0, 8, norms=norms * 2, metric="l2")
    with pytest.raises(ValueError, match="one probe"):
        ann._f16dot.dot(np.empty(16, np.float32), np.ones((2, 1, DIM), np.float32), [x], 0, 8, norms=norms,
                        metric="l2")
    with pytest.raises(ValueError, match="float32"):
        ann._f16dot.dot(out, q, [x], 0, 8, norms=[np.ones(8, np.float64)], metric="l2")


def rerank_oracle(q: np.ndarray, layers, rows, metric: str) -> np.ndarray:
    """The paper's metric in float64 over the concatenated layers, written out plainly."""
    x = np.concatenate([a[rows].astype(np.float64) for a in layers], axis=1)  # (m, L * dim)
    q64 = q.astype(np.float64).ravel()
    if metric == "l2":
        return np.sqrt(((x - q64) ** 2).sum(1))
    denom = np.sqrt(q64 @ q64) * np.sqrt((x * x).sum(1))
    return np.divide(x @ q64, denom, out=np.zeros(len(x)), where=denom > 0)


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n_layers,dim", [(1, DIM), (5, DIM), (18, DIM), (3, 37)])
def test_c_exact_rerank_equals_float64_oracle(kernel, metric, dtype, n_layers, dim):
    """exact(): the float64 re-rank read in place from float32 or float16 rows, every kernel, any width (37: the
    SIMD paths' tails); a row equal to the probe is at l2 0 exactly, a zero row at cosine 0, a repeated row gets
    the very same value (ties stay ties)."""
    rng = np.random.default_rng(n_layers * 100 + dim)
    n = 211
    layers = [rng.standard_normal((n, dim)).astype(dtype) for _ in range(n_layers)]
    for a in layers:
        a[17] = 0
    q = np.stack([a[42] for a in layers]).astype(np.float32)  # exact float32 values of row 42
    q += (0.5 * rng.standard_normal(q.shape)).astype(np.float32) * (np.arange(n_layers) != 0)[:, None]
    layers[0][43] = q[0]  # row 43 differs from q only outside layer 0
    rows = np.array([42, 17, 210, 0, 42, 5, 43], np.int64)
    out = np.empty(len(rows))
    ann._f16dot.exact(out, q, layers, rows, metric, kernel=kernel)
    np.testing.assert_allclose(out, rerank_oracle(q, layers, rows, metric), rtol=1e-12, atol=1e-12)
    assert out[0] == out[4]
    if metric == "cosine":
        assert out[1] == 0.0
    else:
        assert out[1] == pytest.approx(np.sqrt((q.astype(np.float64) ** 2).sum()), rel=1e-12)
    if n_layers == 1:
        assert out[6] == (0.0 if metric == "l2" else pytest.approx(1.0, rel=1e-12))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_scores_numpy_path_equals_oracle(monkeypatch, metric, dtype):
    """Without the C kernel, `exact_scores` goes layer by layer in numpy: the same values."""
    from facekeys.store import vectors

    monkeypatch.setattr(vectors, "_f16dot", None)
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((50, DIM)).astype(dtype) for _ in range(4)]
    layers[1][9] = 0
    for a in layers:
        a[8] = 0
    q = rng.standard_normal((4, DIM)).astype(np.float32)
    rows = np.array([3, 8, 9, 49, 3], np.int64)
    got = vectors.exact_scores(q, layers, rows, metric)
    np.testing.assert_allclose(got, rerank_oracle(q, layers, rows, metric), rtol=1e-12, atol=1e-12)
    assert got[0] == got[4] and (metric == "l2" or got[1] == 0.0)


@needs_c
def test_c_exact_refuses_bad_arguments():
    exact = ann._f16dot.exact
    x = np.ones((10, DIM), np.float32)
    q = np.ones((1, DIM), np.float32)
    out = np.empty(3)
    rows = np.array([0, 9, 3])
    exact(out, q, [x], rows, "l2")  # fine
    exact(np.empty(0), q, [x], np.zeros(0, np.int64), "cosine")
    bad = [
        ((out.astype(np.float32), q, [x], rows, "l2"), TypeError, "float64"),
        ((np.empty(4), q, [x], rows, "l2"), ValueError, "3 needed"),
        ((out, q, [x], np.array([0, 10, 1]), "l2"), IndexError, "out of range"),
        ((out, q, [x], np.array([0, -1, 1]), "l2"), IndexError, "out of range"),
        ((out, q, [x], rows.astype(np.int32), "l2"), TypeError, "int64"),
        ((out, q, [x], rows, "dot"), ValueError, "metric"),
        ((out, q, [x, x], rows, "l2"), ValueError, "layers"),
        ((out, q.astype(np.float64), [x], rows, "l2"), TypeError, "float32"),
        ((out, q, [x[:, :256]], rows, "l2"), TypeError, "contiguous"),
        ((out, q, [x.astype(np.float64)], rows, "l2"), TypeError, "float16 or float32"),
    ]
    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            exact(*args)
    with pytest.raises(ValueError, match="not available"):
        exact(out, q, [x], rows, "l2", kernel="no-such-kernel")


@needs_c
@pytest.mark.parametrize("m,k", [(0, 5), (1, 1), (7, 3), (300, 26), (300, 300), (10, 20), (5000, 1)])
def test_c_smallest_equals_sorted_oracle(m, k):
    """smallest(): the k smallest values, best first; among equal values the earliest positions; NaN and +inf
    never selected (so fewer than k may come back: the rest of pos/vals is untouched)."""
    rng = np.random.default_rng(m * 31 + k)
    cost = rng.integers(-20, 20, m).astype(np.float32)  # many ties
    if m >= 7:
        cost[[1, 4]] = np.nan
        cost[[2, 5]] = np.inf
        cost[6] = -np.inf
    pos, vals = selection_outputs(k)
    got = ann._f16dot.smallest(cost, pos, vals)
    ok = np.flatnonzero(cost < np.inf)  # finite or -inf
    want = ok[np.lexsort((ok, cost[ok]))][:k]  # by value, ties by position
    assert_selected(got, pos, vals, cost, want)


@needs_c
def test_c_smallest_refuses_bad_arguments():
    cost = np.zeros(5, np.float32)
    for args, exc in [((cost.astype(np.float64), np.zeros(2, np.int64), np.zeros(2, np.float32)), TypeError),
                      ((cost, np.zeros(2, np.int32), np.zeros(2, np.float32)), TypeError),
                      ((cost, np.zeros(2, np.int64), np.zeros(3, np.float32)), TypeError),
                      ((cost.reshape(1, 5), np.zeros(2, np.int64), np.zeros(2, np.float32)), TypeError)]:
        with pytest.raises(exc):
            ann._f16dot.smallest(*args)
    ro = np.zeros(2, np.int64)
    ro.flags.writeable = False
    with pytest.raises(TypeError):
        ann._f16dot.smallest(cost, ro, np.zeros(2, np.float32))


@pytest.mark.parametrize("use_c", [True, False])
def test_smallest_k_one_row_and_many(monkeypatch, use_c):
    """vectors.smallest_k: one row through the C heap (when built), several through FAISS' heap; the same
    contract either way: best first, offset by `first`, position -1 where fewer are selectable."""
    from facekeys.store import vectors

    if use_c and vectors._f16dot is None:
        pytest.skip("C kernel not built")
    if not use_c:
        monkeypatch.setattr(vectors, "_f16dot", None)
    cost = np.array([[5, 1, np.inf, 3, np.nan, 2]], np.float32)
    pos, vals = vectors.smallest_k(cost, 5, first=100)
    np.testing.assert_array_equal(pos, [[101, 105, 103, 100, -1]])
    np.testing.assert_array_equal(vals[:, :4], [[1, 2, 3, 5]])
    pos2, vals2 = vectors.smallest_k(np.concatenate([cost, cost[:, ::-1]]), 2)
    np.testing.assert_array_equal(pos2, [[1, 5], [4, 0]])


def scan_costs(q: np.ndarray, layers, norms, metric: str, kernel: str) -> np.ndarray:
    """The one-probe scan's costs of every row, from dot(norms=, metric=) (tested above against float64)."""
    out = np.empty(len(layers[0]), np.float32)
    ann._f16dot.dot(out, q, layers, 0, len(out), norms=norms, metric=metric, kernel=kernel)
    return out


@needs_c
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n_layers,dim,n,k", [(1, DIM, 2500, 26), (4, DIM, 700, 5), (2, 37, 300, 300),
                                              (3, 48, 9, 20)])
def test_c_top_equals_scan_then_sorted_selection(kernel, metric, dtype, n_layers, dim, n, k):
    """top(): the k best rows of a range by the very costs dot(norms=, metric=) gives, best first, ties by row (integer
    vectors make many), a zero row included; with a mask only admitted rows; ranges that start mid-block and are
    shorter than k; what it does not fill is left as it was."""
    rng = np.random.default_rng([n_layers, dim, n, k])
    layers = [rng.integers(-2, 3, (n, dim)).astype(dtype) for _ in range(n_layers)]
    for a in layers:
        a[3] = 0
        a[n // 2] = a[1]  # equal rows: equal costs
    norms = [np.einsum("nd,nd->n", a.astype(np.float32), a.astype(np.float32)) for a in layers]
    q = rng.integers(-2, 3, (n_layers, dim)).astype(np.float32)
    cost = scan_costs(q, layers, norms, metric, kernel)
    mask = rng.random(n) < 0.6
    for start, stop, m in [(0, n, None), (0, n, mask), (n // 3, n - 1, None), (n // 3, n - 1, mask), (5, 5, None)]:
        pos, vals = selection_outputs(k)
        got = ann._f16dot.top(q, layers, norms, metric, pos, vals, start, stop, m, kernel=kernel)
        rows = np.arange(start, stop)
        if m is not None:
            rows = rows[m[start:stop]]
        want = rows[np.lexsort((rows, cost[rows]))][:k]  # by cost, ties by row
        assert_selected(got, pos, vals, cost, want)


@needs_c
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_c_rank_merges_shares_rescores_and_orders(metric, dtype):
    """rank(): shares' top() results side by side (-1 where a share found fewer) -> the kk best by cost, re-scored as
    exact() does, ordered best first with ties by key id, the first len(out_ids) written; equals one top() over
    the whole range followed by the plain float64 oracle."""
    rng = np.random.default_rng(21)
    n, n_layers, kk, k = 900, 3, 12, 7
    layers = [rng.integers(-2, 3, (n, DIM)).astype(dtype) for _ in range(n_layers)]
    for a in layers:
        a[[10, 400, 850]] = a[5]  # four equal rows: score ties, broken by key id
    norms = [np.einsum("nd,nd->n", a.astype(np.float32), a.astype(np.float32)) for a in layers]
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # key ids unrelated to row order
    q = np.stack([a[5] for a in layers]).astype(np.float32)  # the probe is row 5 (and its copies)
    cuts = [0, 430, 431, n]  # the middle share holds one row: it pads with -1
    pos = np.full(3 * kk, -1, np.int64)
    vals = np.empty(3 * kk, np.float32)
    for i in range(3):
        ann._f16dot.top(q, layers, norms, metric, pos[i * kk:(i + 1) * kk], vals[i * kk:(i + 1) * kk], cuts[i],
                        cuts[i + 1])
    out_ids = np.full(k, -3, np.int64)
    out_scores = np.full(k, 0.25)
    got = ann._f16dot.rank(q, layers, metric, pos, vals, kk, ids, out_ids, out_scores)
    whole_pos, whole_vals = np.full(kk, -1, np.int64), np.empty(kk, np.float32)
    ann._f16dot.top(q, layers, norms, metric, whole_pos, whole_vals, 0, n)
    s = rerank_oracle(q, layers, whole_pos, metric)
    order = np.lexsort((ids[whole_pos], -s if metric == "cosine" else s))[:k]
    assert got == k
    np.testing.assert_array_equal(out_ids, ids[whole_pos[order]])
    np.testing.assert_allclose(out_scores, s[order], rtol=1e-12, atol=1e-12)
    tied = sorted(ids[[5, 10, 400, 850]])
    np.testing.assert_array_equal(out_ids[:4], tied)  # the probe's own row and its three copies, by key id
    # fewer candidates than out_ids: only those written
    few = np.array([-1, 7, -1, 2], np.int64)
    o_ids, o_sc = np.full(5, -3, np.int64), np.full(5, 0.25)
    assert ann._f16dot.rank(q, layers, metric, few, np.zeros(4, np.float32), kk, ids, o_ids, o_sc) == 2
    assert (o_ids[2:] == -3).all() and (o_sc[2:] == 0.25).all()
    assert set(o_ids[:2]) == {ids[7], ids[2]}


@needs_c
def test_c_top_and_rank_refuse_bad_arguments():
    top, rank = ann._f16dot.top, ann._f16dot.rank
    x = np.ones((10, DIM), np.float32)
    nx = [np.full(10, float(DIM), np.float32)]
    q = np.ones((1, DIM), np.float32)
    pos, vals = np.full(3, -1, np.int64), np.zeros(3, np.float32)
    assert top(q, [x], nx, "l2", pos, vals, 0, 10) == 3  # fine
    bad_top = [
        ((q, [x], nx, "dot", pos, vals, 0, 10), ValueError, "metric"),
        ((q, [x], nx, "l2", pos, vals, 0, 11), IndexError, "out of range"),
        ((q, [x], nx, "l2", pos, vals, 4, 3), IndexError, "out of range"),
        ((q, [x], [nx[0][:5]], "l2", pos, vals, 0, 10), ValueError, "at least 10"),
        ((q, [x], nx * 2, "l2", pos, vals, 0, 10), ValueError, "norms has 2"),
        ((q, [x], nx, "l2", pos.astype(np.int32), vals, 0, 10), TypeError, "int64"),
        ((q, [x], nx, "l2", pos, vals[:2], 0, 10), TypeError, "as long as pos"),
        ((q, [x], nx, "l2", pos, vals, 0, 10, np.ones(10, np.int64)), TypeError, "mask"),
        ((q, [x], nx, "l2", pos, vals, 0, 10, np.ones(9, bool)), TypeError, "mask"),
        ((q.astype(np.float64), [x], nx, "l2", pos, vals, 0, 10), TypeError, "float32"),
        ((q, [x, x], nx, "l2", pos, vals, 0, 10), ValueError, "layers"),
    ]
    for args, exc, match in bad_top:
        with pytest.raises(exc, match=match):
            top(*args)
    ids = np.arange(10, dtype=np.int64)
    oi, osc = np.empty(2, np.int64), np.empty(2)
    assert rank(q, [x], "l2", pos, vals, 3, ids, oi, osc) == 2  # fine
    bad_rank = [
        ((q, [x], "l2", np.array([0, 10, 1]), vals, 3, ids, oi, osc), IndexError, "out of range"),
        ((q, [x], "l2", np.array([0, -2, 1]), vals, 3, ids, oi, osc), IndexError, "out of range"),
        ((q, [x], "l2", np.array([0, 7, 1]), vals, 3, ids[:5], oi, osc), IndexError, "out of range"),  # ids: too short
        ((q, [x], "l2", pos, vals, -1, ids, oi, osc), ValueError, "kk"),
        ((q, [x], "cos", pos, vals, 3, ids, oi, osc), ValueError, "metric"),
        ((q, [x], "l2", pos, vals, 3, ids, oi, osc.astype(np.float32)), TypeError, "out_scores"),
        ((q, [x], "l2", pos, vals, 3, ids, oi[:1], osc), TypeError, "as long as each other"),
        ((q, [x], "l2", pos, vals, 3, ids.astype(np.int32), oi, osc), TypeError, "ids"),
    ]
    for args, exc, match in bad_rank:
        with pytest.raises(exc, match=match):
            rank(*args)
