"""Malformed requests against a real server on loopback, sent as raw bytes through generic channel calls: every one
is answered INVALID_ARGUMENT (never INTERNAL), with short details that do not echo the input, without a traceback
in the log; nothing of a refused request is stored and the server goes on serving. With credentials, a caller
that does not authenticate gets UNAUTHENTICATED whatever bytes it sends (authentication before parsing)."""

from __future__ import annotations

import logging
import secrets

import grpc
import numpy as np
import pytest
from fkhelpers import make_tls, random_keys

from facekeys import limits, wire
from facekeys.client import Client
from facekeys.records import NewKey, Where
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc
from google.protobuf.message import Message

BOUND = 1024  # bytes of status details, and of all trailing metadata, any answer may have
MiB = 1 << 20
METHODS = ("Enroll", "EnrollStream", "Match", "Get", "Delete", "ListIdentities", "Stats")
GOOD = random_keys(4, seed=3)


def _tensor(a, dtype="float32", **kw):
    t = wire.array_to_tensor(a, dtype)
    for k, v in kw.items():
        if k == "shape":
            del t.shape[:]
            t.shape.extend(v)
        else:  # data, or raw_dtype: the enum number as sent
            setattr(t, "dtype" if k == "raw_dtype" else k, v)
    return t


def _key(**kw) -> pb.KeyInput:
    m = pb.KeyInput(identity_id="p0", encoder_id="enc", latent=_tensor(GOOD[0]),
                    where=pb.Where(camera_id="cam", video_id="v", track_id="t", t_start=1.0, t_end=2.0,
                                   boxes=[pb.Box(frame_index=0, x=1, y=2, w=3, h=4)]),
                    obfuscation=pb.Obfuscation(method="mosaic", strength=12.0))
    for path, value in kw.items():  # "where__t_start": m.where.t_start
        *parents, name = path.split("__")
        obj = m
        for part in parents:
            obj = getattr(obj, part)
        if isinstance(value, Message):
            getattr(obj, name).CopyFrom(value)
        elif isinstance(value, dict):
            getattr(obj, name).clear()
            getattr(obj, name).update(value)
        elif isinstance(value, list):
            del getattr(obj, name)[:]
            getattr(obj, name).extend(value)
        else:
            setattr(obj, name, value)
    return m


def _enroll(*keys) -> bytes:
    return pb.EnrollRequest(keys=list(keys)).SerializeToString()


def _match(**kw) -> bytes:
    probe = kw.pop("latents", _tensor(GOOD[0]))
    flt = pb.Filter(**kw.pop("filter", {}))
    m = pb.MatchRequest(encoder_id=kw.pop("encoder_id", "enc"), latents=probe, layers=kw.pop("layers", "high:4"),
                        filter=flt, **kw)
    return m.SerializeToString()


def _nan_latent(value, dtype="float32"):
    a = GOOD[0].copy()
    a[3, 7] = value
    return _tensor(a, dtype)


def _boxes_raw(n: int) -> pb.Where:
    """A Where of n boxes (w=1), built from bytes (repeated field 6, a Box of w=1 each)."""
    return pb.Where.FromString(b"\x32\x02\x20\x01" * n)


def _cases():
    """(id, method, request bytes): every way a request can be malformed that the tests know of."""
    out = []
    # undecodable: garbage, a zero tag, a truncated varint, a length past the end, and truncated real messages
    garbage = {"ff": b"\xff\xff\xff\xff", "tag0": b"\x00", "varint": b"\x08\x80", "length": b"\x0a\x10abc",
               "endgroup": b"\x0c"}
    truncated = {
        "Enroll": _enroll(_key())[:-3], "EnrollStream": _enroll(_key())[:40], "Match": _match()[:-5],
        "Get": pb.GetRequest(key_id=2**40).SerializeToString()[:-1],
        "Delete": pb.DeleteRequest(identity_id="somebody").SerializeToString()[:-2],
        "ListIdentities": pb.ListIdentitiesRequest(after="somebody").SerializeToString()[:-2],
        "Stats": b"\x08",
    }
    for method in METHODS:
        out += [(f"{method}-undecodable-{name}", method, raw) for name, raw in garbage.items()]
        out.append((f"{method}-truncated", method, truncated[method]))
    utf8 = {"Enroll": _enroll(_key(identity_id="\x01XX")), "Match": _match(encoder_id="\x01XX"),
            "Delete": pb.DeleteRequest(identity_id="\x01XX").SerializeToString(),
            "ListIdentities": pb.ListIdentitiesRequest(after="\x01XX").SerializeToString()}
    for method, raw in utf8.items():  # invalid UTF-8 in a string field
        out.append((f"{method}-bad-utf8", method, raw.replace(b"\x01XX", b"\x01\xff\xfe")))
    out.append(("EnrollStream-bad-utf8", "EnrollStream", utf8["Enroll"].replace(b"\x01XX", b"\x01\xff\xfe")))

    # enrol: each is sent to Enroll and to EnrollStream
    enroll = {
        # tensors: shapes whose product wraps int64 (2**64 -> 0 bytes "fit"), zero, too many dims, no shape, ...
        "shape-wraps-big-dims": _key(latent=_tensor(GOOD[0], shape=[2**31, 2**31, 4], data=b"")),
        "shape-wraps-small-dims": _key(latent=_tensor(GOOD[0], shape=[2**16] * 4, data=b"")),
        "shape-wraps-negative": _key(latent=_tensor(GOOD[0], shape=[2**32 - 1, 2**32 - 1])),
        "shape-zero": _key(latent=_tensor(GOOD[0], shape=[0, 18, 512], data=b"")),
        "shape-5-dims": _key(latent=_tensor(GOOD[0], shape=[1, 1, 1, 18, 512])),
        "shape-missing": _key(latent=_tensor(GOOD[0], shape=[])),
        "shape-wrong": _key(latent=_tensor(GOOD[0], shape=[512, 18])),
        "bytes-short": _key(latent=_tensor(GOOD[0], data=b"\0" * 100)),
        "dtype-unknown": _key(latent=_tensor(GOOD[0], raw_dtype=9)),
        "no-face": pb.KeyInput(encoder_id="enc"),
        "latent-nan": _key(latent=_nan_latent(np.nan)), "latent-inf": _key(latent=_nan_latent(np.inf)),
        "latent-minus-inf": _key(latent=_nan_latent(-np.inf)), "latent-huge": _key(latent=_nan_latent(1e30)),
        "latent-f16-inf": _key(latent=_nan_latent(np.inf, "float16")),
        "latent-f16-nan": _key(latent=_nan_latent(np.nan, "float16")),
        "strength-nan": _key(obfuscation__strength=float("nan")),
        "strength-inf": _key(obfuscation__strength=float("inf")),
        "strength-minus-inf": _key(obfuscation__strength=float("-inf")),
        "t-start-nan": _key(where__t_start=float("nan")), "t-start-inf": _key(where__t_start=float("inf")),
        "t-start-minus-inf": _key(where__t_start=float("-inf"), where__t_end=float("-inf")),
        "t-end-nan": _key(where__t_end=float("nan")), "t-end-before-start": _key(where__t_end=0.5),
        "box-w-zero": _key(where__boxes=[pb.Box(w=0, h=4)]), "box-h-negative": _key(where__boxes=[pb.Box(w=3, h=-1)]),
        "box-frame-beyond-int32": _key(where__boxes=[pb.Box(frame_index=2**32 - 1, w=3, h=4)]),
        "boxes-too-many": _key(where=_boxes_raw(limits.MAX_BOXES + 1)),
        "encoder-id-missing": _key(encoder_id=""),
        "identity-id-nul": _key(identity_id="a\x00b"),
        "attributes-too-many": _key(attributes={str(i): "x" for i in range(limits.MAX_ATTRIBUTES + 1)}),
    }
    strings = {"identity_id": limits.MAX_ID_LEN, "encoder_id": limits.MAX_ID_LEN, "where__camera_id": limits.MAX_ID_LEN,
               "where__video_id": limits.MAX_ID_LEN, "where__track_id": limits.MAX_ID_LEN,
               "obfuscation__method": limits.MAX_METHOD_LEN}
    for name, limit in strings.items():
        for n in (limit + 1, MiB):
            enroll[f"{name}-{n}-chars"] = _key(**{name: "x" * n})
    for n in (limits.MAX_ATTRIBUTE_KEY_LEN + 1, MiB):
        enroll[f"attribute-key-{n}-chars"] = _key(attributes={"k" * n: "v"})
    for n in (limits.MAX_ATTRIBUTE_VALUE_LEN + 1, MiB):
        enroll[f"attribute-value-{n}-chars"] = _key(attributes={"k": "v" * n})
    for name, key in enroll.items():
        out.append((f"Enroll-{name}", "Enroll", _enroll(key)))
        out.append((f"EnrollStream-{name}", "EnrollStream", _enroll(key)))
    # all or nothing: a good key next to a bad one, and no keys at all
    out.append(("Enroll-good-and-bad", "Enroll", _enroll(_key(), enroll["latent-nan"])))
    out.append(("EnrollStream-good-and-bad", "EnrollStream", _enroll(_key(), enroll["strength-nan"])))
    out += [("Enroll-empty", "Enroll", b""), ("EnrollStream-empty", "EnrollStream", b"")]

    match = {
        "shape-wraps-big-dims": _match(latents=_tensor(GOOD[0], shape=[2**31, 2**31, 4], data=b"")),
        "shape-wraps-small-dims": _match(latents=_tensor(GOOD[0], shape=[2**16] * 4, data=b"")),
        "shape-zero": _match(latents=_tensor(GOOD[0], shape=[0, 18, 512], data=b"")),
        "shape-wrong": _match(latents=_tensor(GOOD[0], shape=[9216])),
        "dtype-unknown": _match(latents=_tensor(GOOD[0], raw_dtype=5)),
        "no-probe": pb.MatchRequest(encoder_id="enc").SerializeToString(),
        "probe-nan": _match(latents=_nan_latent(np.nan)), "probe-inf": _match(latents=_nan_latent(np.inf)),
        "probe-minus-inf": _match(latents=_nan_latent(-np.inf)), "probe-huge": _match(latents=_nan_latent(-1e30)),
        "probe-f16-inf": _match(latents=_nan_latent(np.inf, "float16")),
        "threshold-nan": _match(threshold=float("nan")), "threshold-inf": _match(threshold=float("inf")),
        "threshold-minus-inf": _match(threshold=float("-inf")),
        "t-from-nan": _match(filter={"t_from": float("nan")}), "t-to-nan": _match(filter={"t_to": float("nan")}),
        "t-from-inf": _match(filter={"t_from": float("inf")}),
        "t-to-minus-inf": _match(filter={"t_to": float("-inf")}),
        "t-range-reversed": _match(filter={"t_from": 5.0, "t_to": 4.0}),
        "filter-camera-ids-too-many": _match(filter={"camera_ids": ["c"] * (limits.MAX_FILTER_IDS + 1)}),
        "filter-identity-ids-too-many": _match(filter={"identity_ids": ["p"] * (limits.MAX_FILTER_IDS + 1)}),
        "encoder-id-missing": _match(encoder_id=""),
        "layers-bad": _match(layers="mid:2"), "layers-out-of-range": _match(layers="1-99"),
        "layers-huge-number": _match(layers="9" * 200),
        "top-k-negative": _match(top_k=-1), "top-k-huge": _match(top_k=2**31 - 1),
        "ann-candidates-negative": _match(ann_candidates=-5), "metric-unknown": _match(metric=7),
    }
    for n in (limits.MAX_ID_LEN + 1, MiB):
        match[f"encoder_id-{n}-chars"] = _match(encoder_id="e" * n)
        match[f"filter-camera-id-{n}-chars"] = _match(filter={"camera_ids": ["c" * n]})
        match[f"filter-identity-id-{n}-chars"] = _match(filter={"identity_ids": ["p" * n]})
    for n in (limits.MAX_LAYERS_SPEC_LEN + 1, MiB):
        match[f"layers-{n}-chars"] = _match(layers="1," * (n // 2) + "1")
    out += [(f"Match-{name}", "Match", raw) for name, raw in match.items()]

    out += [
        ("Get-key-zero", "Get", pb.GetRequest(key_id=0).SerializeToString()),
        ("Get-key-beyond-int64", "Get", pb.GetRequest(key_id=2**64 - 1, include_latent=True).SerializeToString()),
        ("Delete-no-target", "Delete", b""),
        ("Delete-key-zero", "Delete", pb.DeleteRequest(key_id=0).SerializeToString()),
        ("Delete-key-beyond-int64", "Delete", pb.DeleteRequest(key_id=2**63).SerializeToString()),
        ("Delete-identity-empty", "Delete", pb.DeleteRequest(identity_id="").SerializeToString()),
        ("Delete-identity-nul", "Delete", pb.DeleteRequest(identity_id="p0\x00").SerializeToString()),
        ("ListIdentities-limit-too-big", "ListIdentities", pb.ListIdentitiesRequest(limit=100_001).SerializeToString()),
    ]
    for n in (limits.MAX_ID_LEN + 1, MiB):
        out.append((f"Delete-identity-{n}-chars", "Delete", pb.DeleteRequest(identity_id="p" * n).SerializeToString()))
        out.append((f"ListIdentities-after-{n}-chars", "ListIdentities",
                    pb.ListIdentitiesRequest(after="p" * n).SerializeToString()))
    return out


CASES = _cases()


def call(channel, method: str, requests: list[bytes], metadata=None):
    """Raw bytes in, raw bytes out, through a generic call (no serializer on either side)."""
    path = f"/facekeys.v1.KeyStore/{method}"
    if method == "EnrollStream":
        rpc = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
        return list(rpc(iter(requests), timeout=60, metadata=metadata))
    [request] = requests
    rpc = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return rpc(request, timeout=60, metadata=metadata)


def refused(channel, method: str, requests: list[bytes], metadata=None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(channel, method, requests, metadata)
    err = e.value
    assert len(err.details().encode()) <= BOUND, err.details()[:200]
    trailer = sum(len(k) + len(v) for k, v in (err.trailing_metadata() or ()))
    assert trailer <= BOUND
    return err


def no_tracebacks(caplog):
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage()[:200] for r in bad]


@pytest.fixture(scope="module")
def served(module_server_factory):
    srv = module_server_factory(max_message_bytes=32 * MiB, store={"map_size": 1 << 29})
    with Client(srv.address) as c:
        c.enroll([NewKey(GOOD[i], "enc", f"p{i}", Where("cam", "v", str(i), i, i + 1)) for i in range(3)])
    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 32 * MiB),
                                                          ("grpc.max_receive_message_length", 32 * MiB)])
    yield srv, channel, pb_grpc.KeyStoreStub(channel)
    channel.close()


def _state(stub):
    s = stub.Stats(pb.StatsRequest(), timeout=30)
    return s.keys, s.identities, s.next_key_id


@pytest.mark.parametrize("method,raw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_is_invalid_argument(served, caplog, method, raw):
    srv, channel, stub = served
    before = _state(stub)
    caplog.set_level(logging.INFO)
    err = refused(channel, method, [raw])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details()[:200])
    no_tracebacks(caplog)
    assert _state(stub) == before  # nothing stored, nothing deleted
    r = stub.Match(pb.MatchRequest(encoder_id="enc", latents=_tensor(GOOD[1]), layers="all"), timeout=30)
    assert r.results[0].accepted and r.results[0].hits[0].identity_id == "p1"  # still serving


def test_every_method_and_every_string_field_is_covered():
    names = [c[0] for c in CASES]
    for method in METHODS:
        assert any(n.startswith(f"{method}-undecodable") for n in names)
    for field in ("identity_id", "encoder_id", "camera_id", "video_id", "track_id", "method", "attribute-key",
                  "attribute-value", "Match-encoder_id", "filter-camera-id", "filter-identity-id", "Match-layers",
                  "Delete-identity", "ListIdentities-after"):
        assert any(field in n and n.endswith(f"{MiB}-chars") for n in names), field


def test_errors_quote_a_bounded_prefix(served):
    _, channel, _ = served
    err = refused(channel, "Match", [_match(layers="1-2,x" + "y" * MiB)])
    assert "yyyy" not in err.details()  # no echo of the caller's string at all (the length is refused first)
    err = refused(channel, "Match", [_match(layers="1-2,x" + "y" * 200)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "..." in err.details()
    assert len(err.details()) < 2 * limits.QUOTE_CHARS + 100
    err = refused(channel, "Match", [_match(encoder_id="unknown" + "u" * 200)])  # NOT_FOUND quotes a prefix too
    assert err.code() == grpc.StatusCode.NOT_FOUND and "u" * (limits.QUOTE_CHARS + 1) not in err.details()


def test_stream_refuses_a_bad_message_after_good_ones(served, caplog):
    """Each stream message is parsed as the server reads it: acks for the good ones, then INVALID_ARGUMENT; the
    bad message stores nothing."""
    _, channel, stub = served
    keys0, _, next0 = _state(stub)
    caplog.set_level(logging.INFO)
    acks = []
    rpc = channel.stream_stream("/facekeys.v1.KeyStore/EnrollStream", request_serializer=None,
                                response_deserializer=None)
    good = _enroll(_key(identity_id="stream-good", latent=_tensor(GOOD[3])))
    with pytest.raises(grpc.RpcError) as e:
        for ack in rpc(iter([good, b"\xff\xff\xff", good]), timeout=60):
            acks.append(pb.EnrollResponse.FromString(ack))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(acks) == 1 and acks[0].keys[0].identity_id == "stream-good"
    assert _state(stub)[0] == keys0 + 1 and _state(stub)[2] == next0 + 1
    no_tracebacks(caplog)
    assert stub.Delete(pb.DeleteRequest(identity_id="stream-good"), timeout=30).deleted_key_ids == [next0]


# -- with credentials: authentication comes before parsing -------------------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """TLS, tokens and roles, audit log, key transform and master key (as tests/security's fixture), built
    in-process."""
    from facekeys.security.config import SecurityConfig
    from facekeys.security.credentials import CredentialStore
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    tmp = tmp_path_factory.mktemp("secured")
    tls = make_tls(tmp / "tls")
    for name in ("audit.key", "transform.secret", "master.key"):
        (tmp / name).write_bytes(secrets.token_hex(32).encode())
    creds = CredentialStore(tmp / "credentials.json")
    tokens = {name: creds.issue(name, roles)[1] for name, roles in
              [("gw", ["gateway"]), ("inv", ["investigator"]), ("ops", ["admin"])]}
    security = SecurityConfig(tls_cert=tls["server_cert"], tls_key=tls["server_key"],
                              credentials_file=tmp / "credentials.json", audit_log=tmp / "audit.log",
                              audit_key_file=tmp / "audit.key", transform_secret_file=tmp / "transform.secret",
                              master_key_file=tmp / "master.key")
    srv = KeyStoreServer(ServerConfig(data_dir=tmp / "data", port=0, metrics_port=-1,
                                      store=StoreConfig(map_size=1 << 29), security=security)).start()
    channel = grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(tls["ca"].read_bytes()))
    yield srv, channel, tokens
    channel.close()
    srv.stop(grace=0)


def _bearer(token):
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("method", METHODS)
def test_unauthenticated_garbage_is_unauthenticated(secured, caplog, method):
    _, channel, tokens = secured
    caplog.set_level(logging.INFO)
    for metadata in (None, _bearer("fk_not-a-real-token")):
        for raw in (b"\xff\xff\xff\xff", _enroll(_key())[:-3], _enroll(_key(obfuscation__strength=float("nan")))):
            err = refused(channel, method, [raw], metadata)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (err.code(), err.details())
            assert "parse" not in err.details() and "bytes" not in err.details()
    no_tracebacks(caplog)


def test_authenticated_garbage_is_invalid_argument_and_stores_nothing(secured, caplog):
    _, channel, tokens = secured
    caplog.set_level(logging.INFO)
    stats = lambda: pb.StatsResponse.FromString(call(channel, "Stats", [b""], _bearer(tokens["ops"])))  # noqa: E731
    before = stats().keys
    # a role that may not call the method hears PERMISSION_DENIED, not how its bytes parse
    assert refused(channel, "Match", [b"\xff\xff"], _bearer(tokens["gw"])).code() == grpc.StatusCode.PERMISSION_DENIED
    for method in ("Enroll", "EnrollStream"):
        for raw in (b"\xff\xff\xff\xff", _enroll(_key())[:-3], _enroll(_key(latent=_nan_latent(np.inf))),
                    _enroll(_key(), _key(obfuscation__strength=float("nan")))):
            err = refused(channel, method, [raw], _bearer(tokens["gw"]))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    err = refused(channel, "Match", [_match(filter={"t_from": float("nan")})], _bearer(tokens["inv"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stats().keys == before
    call(channel, "Enroll", [_enroll(_key())], _bearer(tokens["gw"]))  # still serving
    assert stats().keys == before + 1
    no_tracebacks(caplog)


def test_health_and_reflection_parse_in_the_handler_too(server_factory, caplog):
    """Every service the server registers parses in the handler: health (on the main port and on the plaintext
    health-only port) and reflection answer undecodable bytes with INVALID_ARGUMENT, and keep serving."""
    from grpc_health.v1 import health_pb2

    srv = server_factory(health_port=0)
    caplog.set_level(logging.INFO)
    for port in (srv.port, srv.health_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                                        response_deserializer=None)
            with pytest.raises(grpc.RpcError) as e:
                check(b"\xff\xff\xff", timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            ok = health_pb2.HealthCheckResponse.FromString(check(b"", timeout=30))
            assert ok.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(srv.address) as channel:
        info = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                     request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            list(info(iter([b"\x00"]), timeout=30))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_tracebacks(caplog)
