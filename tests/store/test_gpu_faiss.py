"""The FAISS GPU build at work (runs only where the installed FAISS sees a GPU: the lent device machine via
benchmarks/device/faiss_gpu.sh; skipped on CPU-only CI). test_ann_flat.py runs the flat backend on the GPU
there too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facekeys.bench.synthetic import SyntheticConfig, make_workload
from facekeys.layers import parse_layers
from facekeys.store import Filter, StoreConfig
from facekeys.store.ann import AnnLayerIndex
from facekeys.store.flat import D_FLAT, FlatCandidates, flat_probe, gpu_count, norm_columns

from fkhelpers import attrs, random_keys

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="needs the FAISS GPU build and a GPU")]


def _rows(x16: np.ndarray) -> np.ndarray:
    x = x16.astype(np.float32)
    return np.concatenate([x.reshape(len(x), -1), norm_columns(np.einsum("nld,nld->nl", x, x))], 1)


def test_flat_gpu_agrees_with_the_cpu_flat_index():
    x16 = random_keys(4000, seed=1).astype(np.float16)
    rows = _rows(x16)
    gpu, cpu = FlatCandidates(on_gpu=True), FlatCandidates(on_gpu=False)
    gpu.add(rows)
    cpu.add(rows)
    assert gpu.ntotal == cpu.ntotal == 4000 and gpu.nbytes == 4000 * D_FLAT * 2
    probes = x16[:50].astype(np.float32) + 0.3 * random_keys(50, seed=2)
    for subset in ("high:1", "high:4", "all"):
        lay = list(parse_layers(subset))
        for metric in ("l2", "cosine"):
            q = flat_probe(np.ascontiguousarray(probes[:, lay]), lay, metric, np.full(18, 300.0))
            g, c = gpu.search(q, 20), cpu.search(q, 20)
            assert np.mean(g[:, 0] == c[:, 0]) >= 0.98, (subset, metric)  # the probe rounds to float16 on the GPU
            assert np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(g, c)]) >= 0.98, (subset, metric)
    assert gpu.search(q, 5000).shape == (50, 2048)  # the GPU's k limit, not an error


def test_flat_gpu_concurrent_searches_equal_serial(tmp_path):
    data = make_workload(SyntheticConfig(identities=3000, seed=8))
    ix = AnnLayerIndex(StoreConfig(index_mode="ann", ann_train_min=1024, ann_exact_bytes=0, ann_threads=4), None,
                       background=False)
    try:
        ids = np.arange(1, 3001)
        ix.add(ids, data.gallery, attrs(3000))
        ix.sync()
        assert ix.backend == "flat-gpu" and ix.device_bytes == 3000 * D_FLAT * 2
        lay = parse_layers("high:6")
        serial = [ix.search(data.probes[i : i + 1], lay, "l2", 5, Filter()) for i in range(40)]
        with ThreadPoolExecutor(8) as ex:
            par = list(ex.map(lambda i: ix.search(data.probes[i : i + 1], lay, "l2", 5, Filter()), range(40)))
        for a, b in zip(serial, par):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
    finally:
        ix.close()


def test_pq_backend_trains_on_the_gpu():
    """ann_backend="pq" on a GPU machine: PQ k-means assignment on the GPU; recall as on the CPU."""
    data = make_workload(SyntheticConfig(identities=3000, seed=3))
    ix = AnnLayerIndex(StoreConfig(index_mode="ann", ann_backend="pq", ann_train_min=1024, ann_exact_bytes=1 << 20),
                       None, background=False)
    try:
        ix.add(np.arange(1, 3001), data.gallery, attrs(3000))
        ix.sync()
        assert ix.backend == "pq" and ix.trained and ix.device_bytes == 0
        probes = data.probes[:200]
        for subset in ("high:1", "high:4", "all"):
            lay = parse_layers(subset)
            ann = ix.search(probes, lay, "cosine", 10, Filter())
            ex = ix.search(probes, lay, "cosine", 10, Filter(), exact=True)
            assert np.mean(ann.ids[:, 0] == ex.ids[:, 0]) >= 0.97, subset  # the CPU floors of test_ann.py
    finally:
        ix.close()
