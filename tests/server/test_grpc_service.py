"""The real gRPC server on a loopback port: happy paths, every bad input's status, health, reflection,
metrics, concurrency."""

from __future__ import annotations

import threading
import urllib.request

import grpc
import numpy as np
import pytest
from fkhelpers import random_keys
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from facekeys import wire
from facekeys.client import Client
from facekeys.errors import InvalidArgument, NotFound
from facekeys.records import Filter, NewKey, Where
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc

OK_LATENT = wire.array_to_tensor(np.zeros((18, 512), np.float32) + 0.5)


@pytest.fixture
def served(server_factory):
    srv = server_factory(max_message_bytes=4 << 20, store={"map_size": 1 << 29, "max_probes": 16})
    x = random_keys(20, seed=1)
    with Client(srv.address) as c:
        c.enroll([NewKey(x[i], "enc", f"p{i}", Where("cam1" if i % 2 else "cam2", "v", str(i), i, i + 1))
                  for i in range(20)])
    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20)])
    yield srv, x, pb_grpc.KeyStoreStub(channel), channel
    channel.close()


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def key_msg(tensor=None, **kw):
    return pb.KeyInput(encoder_id=kw.pop("encoder_id", "enc"), latent=tensor or OK_LATENT, **kw)


def test_client_round_trip(served):
    srv, x, _, _ = served
    with Client(srv.address) as c:
        r = c.match(x[:3] + 0.05, "enc", "high:4", "cosine", top_k=3)
        assert [p.hits[0].identity_id for p in r.results] == ["p0", "p1", "p2"]
        assert all(p.accepted for p in r.results) and r.layers == (0, 1, 2, 3) and r.searched == 20
        r = c.match(x[5], "enc", "all", "l2", top_k=3, filter=Filter(camera_ids=("cam2",)))  # p5 is on cam1
        assert r.searched == 10 and "p5" not in {h.identity_id for h in r.results[0].hits}
        assert {h.camera_id for h in r.results[0].hits} == {"cam2"}
        rec = c.get(3, include_latent=True)
        np.testing.assert_array_equal(rec.latent, x[2])
        assert c.delete_identity("p2") == [3]
        with pytest.raises(NotFound):
            c.get(3)
        s = c.stats()
        assert (s.keys, s.identities, dict(s.keys_by_encoder)) == (19, 19, {"enc": 19})
        page, _ = c.list_identities(limit=3)
        assert [p for p, _ in page] == ["p0", "p1", "p10"]


def test_float16_on_the_wire(served):
    srv, x, _, _ = served
    with Client(srv.address, wire_dtype="float16") as c:
        [k] = c.enroll([NewKey(x[0], "enc16")])
        r = c.match(x[0], "enc16", "all", "cosine")
        assert r.results[0].hits[0].key_id == k.key_id
        assert r.results[0].hits[0].score == pytest.approx(1.0, abs=1e-6)


BAD_ENROLLS = {
    "byte length": lambda: key_msg(pb.Tensor(data=b"\0" * 100, dtype=pb.FLOAT32, shape=[18, 512])),
    "shape": lambda: key_msg(wire.array_to_tensor(np.zeros((18, 511), np.float32))),
    "nan": lambda: key_msg(wire.array_to_tensor(np.full((18, 512), np.nan, np.float32))),
    "inf": lambda: key_msg(wire.array_to_tensor(np.full((18, 512), np.inf, np.float16), "float16")),
    "dtype": lambda: key_msg(pb.Tensor(data=b"\0" * 18 * 512 * 4, dtype=7, shape=[18, 512])),
    "no shape": lambda: key_msg(pb.Tensor(data=b"\0" * 18 * 512 * 4)),
    "no latent": lambda: pb.KeyInput(encoder_id="enc"),
    "no encoder": lambda: key_msg(encoder_id=""),
    "box": lambda: key_msg(where=pb.Where(boxes=[pb.Box(frame_index=0, x=0, y=0, w=-3, h=4)])),
    "times": lambda: key_msg(where=pb.Where(t_start=10, t_end=5)),
}


@pytest.mark.parametrize("case", sorted(BAD_ENROLLS))
def test_bad_enroll_is_invalid_argument_and_stores_nothing(served, case):
    srv, x, stub, _ = served
    before = stub.Stats(pb.StatsRequest())
    request = pb.EnrollRequest(keys=[key_msg(), BAD_ENROLLS[case]()])  # one good, one bad: none stored
    code, details = status_of(lambda: stub.Enroll(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details
    assert stub.Stats(pb.StatsRequest()) == before


def test_empty_enroll_is_invalid(served):
    _, _, stub, _ = served
    assert status_of(lambda: stub.Enroll(pb.EnrollRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT


def match_req(**kw):
    base = dict(encoder_id="enc", latents=OK_LATENT, layers="high:4", top_k=1)
    base.update(kw)
    return pb.MatchRequest(**base)


BAD_MATCHES = {
    "layer 0": (dict(layers="0"), "INVALID_ARGUMENT"),
    "layer 19": (dict(layers="19"), "INVALID_ARGUMENT"),
    "reversed": (dict(layers="5-2"), "INVALID_ARGUMENT"),
    "garbage layers": (dict(layers="high:"), "INVALID_ARGUMENT"),
    "metric": (dict(metric=9), "INVALID_ARGUMENT"),
    "top_k negative": (dict(top_k=-1), "INVALID_ARGUMENT"),
    "top_k huge": (dict(top_k=10**7), "INVALID_ARGUMENT"),
    "probe shape": (dict(latents=wire.array_to_tensor(np.zeros((2, 18, 500), np.float32))), "INVALID_ARGUMENT"),
    "probe nan": (dict(latents=wire.array_to_tensor(np.full((18, 512), np.nan, np.float32))), "INVALID_ARGUMENT"),
    "no probe": (dict(latents=None), "INVALID_ARGUMENT"),
    "no encoder": (dict(encoder_id=""), "INVALID_ARGUMENT"),
    "unknown encoder": (dict(encoder_id="other"), "NOT_FOUND"),
    "threshold nan": (dict(threshold=float("nan")), "INVALID_ARGUMENT"),
    "time range": (dict(filter=pb.Filter(t_from=10, t_to=5)), "INVALID_ARGUMENT"),
    "zero probe": (dict(latents=wire.array_to_tensor(np.zeros((18, 512), np.float32))), "INVALID_ARGUMENT"),
    "too many probes": (dict(latents=wire.array_to_tensor(np.ones((17, 18, 512), np.float16), "float16")),
                        "INVALID_ARGUMENT"),
    "ann_candidates negative": (dict(ann_candidates=-1), "INVALID_ARGUMENT"),  # checked in exact mode too
    "ann_candidates huge": (dict(ann_candidates=16_385), "INVALID_ARGUMENT"),
}


@pytest.mark.parametrize("case", sorted(BAD_MATCHES))
def test_bad_match(served, case):
    _, _, stub, _ = served
    kwargs, expected = BAD_MATCHES[case]
    code, details = status_of(lambda: stub.Match(match_req(**kwargs)))
    assert code.name == expected and details


def test_unknown_targets_are_not_found(served):
    _, _, stub, _ = served
    assert status_of(lambda: stub.Get(pb.GetRequest(key_id=999)))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.Get(pb.GetRequest(key_id=0)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: stub.Delete(pb.DeleteRequest(key_id=999)))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.Delete(pb.DeleteRequest(identity_id="nobody")))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.Delete(pb.DeleteRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_oversize_message_is_resource_exhausted(served):
    _, _, stub, _ = served
    big = pb.EnrollRequest(keys=[key_msg()] * 200)  # ~7.4 MB > the 4 MiB limit
    assert status_of(lambda: stub.Enroll(big))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Stats(pb.StatsRequest()).keys == 20


def test_full_map_is_resource_exhausted(server_factory):
    srv = server_factory(store={"map_size": 2 << 20})
    x = random_keys(100, seed=3)
    acked = []
    with Client(srv.address) as c:
        with pytest.raises(Exception) as e:
            for i in range(0, 100, 5):
                acked += c.enroll([NewKey(v, "enc") for v in x[i:i + 5]])
        assert e.value.code == "RESOURCE_EXHAUSTED" and "map is full" in str(e.value)
        assert c.stats().keys == len(acked) > 0
        for k, v in zip(acked, x):
            assert c.match(v, "enc", "all", "l2").results[0].hits[0].key_id == k.key_id


def test_image_without_encoder_is_failed_precondition(served):
    srv, _, stub, _ = served
    img = pb.FaceImage(encoded=b"\x89PNG....", landmarks=[0.0] * 10)
    code, details = status_of(lambda: stub.Match(pb.MatchRequest(encoder_id="enc", image=img)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--encoder-checkpoint" in details
    code, _ = status_of(lambda: stub.Enroll(pb.EnrollRequest(keys=[pb.KeyInput(encoder_id="e", image=img)])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_client_raises_domain_errors(served):
    srv, x, _, _ = served
    with Client(srv.address) as c:
        with pytest.raises(InvalidArgument, match="reversed"):
            c.match(x[0], "enc", "5-2")
        with pytest.raises(NotFound, match="key 999 not found"):
            c.get(999)


def test_health_and_reflection(served):
    _, _, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "facekeys.v1.KeyStore"):
        r = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    [resp] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"facekeys.v1.KeyStore", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint(served):
    srv, x, stub, _ = served
    stub.Match(match_req(latents=wire.array_to_tensor(x[0])))
    status_of(lambda: stub.Match(match_req(layers="0")))
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read().decode()
    assert 'facekeys_requests_total{code="OK",method="Match"} 1.0' in text
    assert 'facekeys_requests_total{code="INVALID_ARGUMENT",method="Match"} 1.0' in text
    assert 'facekeys_requests_total{code="OK",method="Enroll"} 1.0' in text
    assert "facekeys_request_duration_seconds_bucket" in text
    assert "facekeys_keys_stored 20.0" in text and "facekeys_identities_stored 20.0" in text
    assert 'facekeys_match_decisions_total{decision="accepted"} 1.0' in text
    assert "facekeys_lmdb_used_bytes" in text and "facekeys_index_bytes" in text


def test_concurrent_matches_during_enrol_streams(server_factory):
    """Matches of known keys stay exact while two enrol streams add thousands of keys."""
    srv = server_factory(workers=8)
    known = random_keys(50, seed=10)
    noise = random_keys(2000, seed=11)
    with Client(srv.address) as c:
        ids = [k.key_id for k in c.enroll([NewKey(v, "enc", f"known{i}") for i, v in enumerate(known)])]
    errors, acked = [], []

    def stream(part):
        with Client(srv.address) as c:
            for acks in c.enroll_stream(part[i:i + 50] for i in range(0, len(part), 50)):
                acked.extend(acks)

    def matcher(seed):
        rng = np.random.default_rng(seed)
        with Client(srv.address) as c:
            for _ in range(40):
                j = rng.integers(0, 50, size=4)
                r = c.match(known[j], "enc", "all", "l2", top_k=1)
                got = [p.hits[0].key_id for p in r.results]
                if got != [ids[i] for i in j] or any(p.hits[0].score > 1e-3 for p in r.results):
                    errors.append((got, j))

    keys = [NewKey(v, "enc") for v in noise]
    threads = [threading.Thread(target=stream, args=(keys[:1000],)), threading.Thread(target=stream, args=(keys[1000:],))]
    threads += [threading.Thread(target=matcher, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(acked) == 2000 and len({k.key_id for k in acked}) == 2000
    with Client(srv.address) as c:
        assert c.stats().keys == 2050
