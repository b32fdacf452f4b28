"""The gRPC client. It hides the byte packing and turns status codes back into `facekeys.errors`."""

from __future__ import annotations

import functools
import inspect
import queue
from typing import Iterable, Iterator, Optional, Sequence

import grpc
import numpy as np

from facekeys import wire
from facekeys.errors import BY_CODE, FacekeysError, InvalidArgument
from facekeys.layers import LayerSpec, parse_layers
from facekeys.records import EnrolledKey, Filter, KeyRecord, MatchQuery, MatchResult, NewKey, StoreStats
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc

MiB = 1 << 20


def _raise_domain(err: grpc.RpcError):
    code = err.code()
    cls = BY_CODE.get(code.name, FacekeysError)
    exc = cls(err.details() or code.name)
    exc.code = code.name
    raise exc from None


def _translated(fn):
    """Re-raise grpc.RpcError as the matching facekeys.errors class (generators too)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except grpc.RpcError as err:
                _raise_domain(err)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            _raise_domain(err)

    return wrapper


def open_channel(target: str, *, token: Optional[str] = None, tls_ca: Optional[bytes] = None,
                 client_cert: Optional[bytes] = None, client_key: Optional[bytes] = None,
                 max_message_bytes: int = 64 * MiB) -> grpc.Channel:
    """A channel to a facekeys service. TLS when `tls_ca` is given (PEM bytes of the CA that signed the
    server certificate; `client_cert`/`client_key` for mutual TLS); a bearer `token` rides on every call.
    A token is only sent over TLS (or to a loopback address in insecure mode)."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    if tls_ca is None:
        if token is not None:
            host = target.rsplit(":", 1)[0].strip("[]")
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise InvalidArgument("refusing to send a token without TLS to a non-loopback address; give tls_ca")
            return grpc.intercept_channel(grpc.insecure_channel(target, options=options), _TokenInterceptor(token))
        return grpc.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=client_key,
                                         certificate_chain=client_cert)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target, creds, options=options)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor,
                        grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` on insecure loopback channels (tests, local tools)."""

    def __init__(self, token: str):
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d):
        md = list(d.metadata or []) + [self._md]
        return d._replace(metadata=md) if hasattr(d, "_replace") else _Details(d, md)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d, metadata):
        self.method, self.timeout, self.credentials = d.method, d.timeout, d.credentials
        self.wait_for_ready, self.compression = getattr(d, "wait_for_ready", None), getattr(d, "compression", None)
        self.metadata = metadata


class ChannelClient:
    """A stub over one channel (see `open_channel` for the TLS/token options); a context manager."""

    stub_class = None  # set by subclasses

    def __init__(self, target: str, timeout: float, *, token: Optional[str] = None, tls_ca: Optional[bytes] = None,
                 client_cert: Optional[bytes] = None, client_key: Optional[bytes] = None,
                 max_message_bytes: int = 64 * MiB):
        self._channel = open_channel(target, token=token, tls_ca=tls_ca, client_cert=client_cert,
                                     client_key=client_key, max_message_bytes=max_message_bytes)
        self._stub = self.stub_class(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Client(ChannelClient):
    """Connect to a key store: `Client("127.0.0.1:50051")`. Use as a context manager or call close().

    Secured servers: `Client(addr, token=..., tls_ca=open("ca.pem","rb").read())`."""

    stub_class = pb_grpc.KeyStoreStub

    def __init__(self, target: str, timeout: float = 30.0, max_message_bytes: int = 64 * MiB,
                 wire_dtype: str = "float32", **channel):
        super().__init__(target, timeout, max_message_bytes=max_message_bytes, **channel)
        self.wire_dtype = wire_dtype

    @_translated
    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def _request(self, keys: Sequence[NewKey]) -> pb.EnrollRequest:
        return pb.EnrollRequest(keys=[wire.new_key_to_pb(k, self.wire_dtype) for k in keys])

    @_translated
    def enroll(self, keys: Sequence[NewKey]) -> list[EnrolledKey]:
        """Enrol a batch; returns after it is durable on the server."""
        return wire.enrolled_from_pb(self._stub.Enroll(self._request(keys), timeout=self.timeout))

    @_translated
    def enroll_stream(self, batches: Iterable[Sequence[NewKey]]) -> Iterator[list[EnrolledKey]]:
        """Stream batches; yields one acknowledgement per batch as soon as it is durable."""
        for response in self._stub.EnrollStream(self._request(b) for b in batches):
            yield wire.enrolled_from_pb(response)

    def open_stream(self) -> "EnrollStream":
        """A long-lived enrol stream for gateways: `send(batch)`, acknowledgements from `acks()`."""
        return EnrollStream(self)

    @_translated
    def match(self, probes: np.ndarray, encoder_id: str, layers: LayerSpec = "high:4", metric: str = "cosine",
              top_k: int = 1, threshold: Optional[float] = None, filter: Optional[Filter] = None, *,
              ann_candidates: int = 0, exact: bool = False) -> MatchResult:
        """Match probes (18, 512) or (Q, 18, 512) against the pool. On an ann store, `ann_candidates` sets the
        candidates per shard (0 = the store's default; limit: `stats().ann_max_candidates`) and `exact=True`
        scans every key; an exact store ignores both."""
        return self.match_with_grants(probes, encoder_id, layers, metric, top_k, threshold, filter,
                                      ann_candidates=ann_candidates, exact=exact)[0]

    @_translated
    def match_with_grants(self, probes, encoder_id, layers="high:4", metric="cosine", top_k=1, threshold=None,
                          filter=None, *, ann_candidates: int = 0,
                          exact: bool = False) -> tuple[MatchResult, list[bytes]]:
        query = MatchQuery(  # checked by the server: no client-side copy of its rules
            probes=np.asarray(probes), encoder_id=encoder_id, layers=parse_layers(layers), metric=metric,
            top_k=top_k, threshold=threshold, filter=filter or Filter(), ann_candidates=ann_candidates, exact=exact)
        request = wire.match_query_to_pb(query, self.wire_dtype)
        return wire.match_from_pb(self._stub.Match(request, timeout=self.timeout))

    @_translated
    def get(self, key_id: int, include_latent: bool = False) -> KeyRecord:
        return wire.record_from_pb(self._stub.Get(pb.GetRequest(key_id=key_id, include_latent=include_latent),
                                                  timeout=self.timeout))

    @_translated
    def delete_key(self, key_id: int) -> list[int]:
        return list(self._stub.Delete(pb.DeleteRequest(key_id=key_id), timeout=self.timeout).deleted_key_ids)

    @_translated
    def delete_identity(self, identity_id: str) -> list[int]:
        return list(self._stub.Delete(pb.DeleteRequest(identity_id=identity_id),
                                      timeout=self.timeout).deleted_key_ids)

    @_translated
    def list_identities(self, after: str = "", limit: int = 1000) -> tuple[list[tuple[str, int]], str]:
        r = self._stub.ListIdentities(pb.ListIdentitiesRequest(after=after, limit=limit), timeout=self.timeout)
        return [(i.identity_id, i.key_count) for i in r.identities], r.next_after

    @_translated
    def stats(self) -> StoreStats:
        return wire.stats_from_pb(self._stub.Stats(pb.StatsRequest(), timeout=self.timeout))


class EnrollStream:
    """A long-lived bidirectional enrol stream. Each `send` is one batch; `acks()` yields in order."""

    _END = object()

    def __init__(self, client: Client):
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._responses = client._stub.EnrollStream(self._requests())
        self._client = client

    def _requests(self):
        while True:
            item = self._q.get()
            if item is self._END:
                return
            yield item

    def send(self, batch: Sequence[NewKey]) -> None:
        self._q.put(self._client._request(batch))

    def close(self) -> None:
        self._q.put(self._END)

    @_translated
    def acks(self) -> Iterator[list[EnrolledKey]]:
        for response in self._responses:
            yield wire.enrolled_from_pb(response)
