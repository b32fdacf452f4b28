"""Per-request ann options end to end (MatchRequest.ann_candidates / exact): the real gRPC server on loopback,
the Python client and the CLI; Stats reports the index mode and the effective ann defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
from fkhelpers import random_keys

from facekeys import wire
from facekeys.client import Client
from facekeys.errors import InvalidArgument
from facekeys.layers import parse_layers
from facekeys.records import MatchQuery, NewKey
from facekeys.store import StoreConfig
from facekeys.store.ann import default_candidates
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc

N, K, MAX_C = 1500, 10, 4096
# ann_exact_bytes=0: even this small store answers from the PQ candidates (by default it would scan exactly);
# ann_max_candidates above N, so the limit itself makes every key a candidate
CFG = dict(index_mode="ann", ann_backend="pq", ann_train_min=1024, ann_merge_idle_s=0.05, ann_exact_bytes=0,
           ann_max_candidates=MAX_C, durable=False)


@pytest.fixture(scope="module")
def ann_server(module_server_factory):
    """A trained ann server over N keys, shared by the module's tests: they only Match and read Stats (training
    18 layers' PQs is most of a test's time)."""
    srv = module_server_factory(store=CFG)
    gallery = random_keys(N, seed=5)
    with Client(srv.address) as c:
        ids = [k.key_id for i in range(0, N, 250) for k in c.enroll([NewKey(x, "enc") for x in gallery[i:i + 250]])]
    assert ids == list(range(1, N + 1))
    srv.store._indexes["enc"].sync()  # train + merge now instead of waiting for the background worker
    probes = gallery[:30] + 0.3 * random_keys(30, seed=6)
    return srv, gallery, probes


def oracle_top(gallery, probe, layers, metric, k):
    """Exact top-k (key ids, scores) over the enrolled float32 values, in float64 (Match re-scores the float16
    index's best from the float32 keys in LMDB)."""
    x = gallery.astype(np.float64)[:, list(layers), :].reshape(len(gallery), -1)
    q = probe[list(layers)].astype(np.float64).ravel()
    if metric == "cosine":
        s = x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
        order = np.argsort(-s, kind="stable")[:k]
    else:
        s = np.sqrt(((x - q) ** 2).sum(1))
        order = np.argsort(s, kind="stable")[:k]
    return (order + 1).tolist(), s[order]


def ids_of(result):
    return [[h.key_id for h in p.hits] for p in result.results]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_equals_oracle_and_more_candidates_never_lose_recall(ann_server, metric):
    srv, gallery, probes = ann_server
    layers = parse_layers("high:4")
    with Client(srv.address) as c:
        ex = c.match(probes, "enc", "high:4", metric, top_k=K, exact=True)
        for probe, p in zip(probes, ex.results):
            want_ids, want_scores = oracle_top(gallery, probe, layers, metric, K)
            assert [h.key_id for h in p.hits] == want_ids
            np.testing.assert_allclose([h.score for h in p.hits], want_scores, rtol=1e-6)  # float32 on the wire
        exact_ids = ids_of(ex)
        recall = {}
        for n in (1, 64, 256, MAX_C):
            got = ids_of(c.match(probes, "enc", "high:4", metric, top_k=K, ann_candidates=n))
            recall[n] = np.array([len(set(a) & set(b)) / K for a, b in zip(got, exact_ids)])
            if n == MAX_C:
                assert got == exact_ids  # every key a candidate: the exact answer, order included
    for small, large in [(1, 64), (64, 256), (256, MAX_C)]:
        assert np.all(recall[large] >= recall[small]), (small, large)  # per probe
    assert recall[1].mean() < 0.9 and recall[MAX_C].mean() == 1.0  # the request's value reached the index


def test_out_of_range_is_invalid_argument_and_changes_nothing(ann_server):
    srv, gallery, probes = ann_server
    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = pb_grpc.KeyStoreStub(channel)
    try:
        before = stub.Stats(pb.StatsRequest())
        for bad in (-1, MAX_C + 1, 2**31 - 1):
            request = wire.match_query_to_pb(MatchQuery.build(probes[:2], "enc", "high:4", ann_candidates=bad))
            with pytest.raises(grpc.RpcError) as e:
                stub.Match(request)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = e.value.details()
            assert "\n" not in details and f"ann_candidates must be in 0..{MAX_C}" in details and str(bad) in details
        ok = stub.Match(wire.match_query_to_pb(MatchQuery.build(probes[:2], "enc", "high:4", ann_candidates=MAX_C)))
        assert [r.hits[0].key_id for r in ok.results] == [1, 2]
        assert stub.Stats(pb.StatsRequest()) == before
    finally:
        channel.close()
    with Client(srv.address) as c:
        with pytest.raises(InvalidArgument, match="ann_candidates"):
            c.match(probes[0], "enc", ann_candidates=-5)
        with pytest.raises(InvalidArgument, match="int32"):  # cannot travel: refused before sending
            c.match(probes[0], "enc", ann_candidates=2**40)


def test_stats_report_mode_and_ann_defaults(ann_server, server_factory):
    srv, _, _ = ann_server
    with Client(srv.address) as c:
        s = c.stats()
    assert s.index_mode == "ann" and s.ann_max_candidates == MAX_C and s.ann_layers == (0, 1, 2, 3)
    assert (s.ann_backend, s.gpu_index_bytes) == ("pq", 0)  # CFG pins the PQ backend
    expected = default_candidates(N, 4, 1 + StoreConfig().rerank_extra, StoreConfig(**CFG))
    assert dict(s.ann_candidates_by_encoder) == {"enc": expected} and 0 < expected < N
    # an exact store: mode, the limit (checked there too), and no ann candidates
    exact = server_factory("exact", default_layers="1-6")
    with Client(exact.address) as c:
        c.enroll([NewKey(x, "enc2") for x in random_keys(3, seed=7)])
        s = c.stats()
        assert (s.index_mode, s.ann_max_candidates, s.ann_layers) == ("exact", 16_384, (0, 1, 2, 3, 4, 5))
        assert (s.ann_backend, s.gpu_index_bytes) == ("", 0)
        assert dict(s.ann_candidates_by_encoder) == {"enc2": 0}
        with pytest.raises(InvalidArgument, match="ann_candidates must be in 0..16384"):
            c.match(random_keys(1, seed=7)[0], "enc2", ann_candidates=16_385)
        r = c.match(random_keys(3, seed=7)[1], "enc2", "all", "l2", ann_candidates=5, exact=True)  # ignored
        assert r.results[0].hits[0].key_id == 2


def test_configured_default_candidates_are_used(store_factory):
    """StoreConfig.ann_candidates, when set, is the default (instead of the size-based one) and Stats says so."""
    store = store_factory(**{**CFG, "ann_candidates": 48})
    gallery = random_keys(1200, seed=8)
    store.enroll([NewKey(x, "enc") for x in gallery])
    store._indexes["enc"].sync()
    assert store.stats().ann_candidates_by_encoder == {"enc": 48}
    probes = gallery[:20] + 0.3 * random_keys(20, seed=9)
    run = lambda **kw: ids_of(store.match(MatchQuery.build(probes, "enc", "high:4", "l2", top_k=K, **kw)))  # noqa: E731
    default, exact = run(), run(exact=True)
    assert default == run(ann_candidates=48) != exact
    assert run(ann_candidates=MAX_C) == exact


def cli(*args):
    return subprocess.run([sys.executable, "-m", "facekeys.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_cli_flags(ann_server, tmp_path):
    srv, gallery, probes = ann_server
    np.save(tmp_path / "probes.npy", probes[:10])
    base = ("match", tmp_path / "probes.npy", "--server", srv.address, "--encoder-id", "enc", "--layers", "high:4",
            "--metric", "l2", "--top-k", K)

    def hits(*flags):
        p = cli(*base, *flags)
        assert p.returncode == 0, p.stderr
        return [[h["key_id"] for h in json.loads(line)["hits"]] for line in p.stdout.splitlines()]

    exact = hits("--exact")
    assert exact == [oracle_top(gallery, q, parse_layers("high:4"), "l2", K)[0] for q in probes[:10]]
    tiny = hits("--ann-candidates", 1)
    with Client(srv.address) as c:
        assert tiny == ids_of(c.match(probes[:10], "enc", "high:4", "l2", top_k=K, ann_candidates=1))
    assert tiny != exact
    for bad in (-1, MAX_C + 1):
        p = cli(*base, "--ann-candidates", bad)
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("facekeys: error: ") and "ann_candidates" in lines[0], p.stderr
    stats = json.loads(cli("stats", "--server", srv.address).stdout)
    assert stats["index_mode"] == "ann" and stats["ann_max_candidates"] == MAX_C and stats["ann_layers"] == "1-4"
    assert stats["ann_backend"] == "pq"
    assert stats["ann_candidates_by_encoder"]["enc"] > 0
