"""The gRPC plumbing both services share: thread-pool server, status/metrics and auth interceptors,
health and reflection, TLS or plaintext listener, optional health-only port, Prometheus endpoint,
graceful stop and signal handling. Each service adds its servicers and owns what it opened."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Callable, Optional

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facekeys.errors import InvalidArgument
from facekeys.security.auth import AuthInterceptor
from facekeys.security.config import Security

from .interceptors import StatusInterceptor
from .metrics import ServiceMetrics

log = logging.getLogger("facekeys.server")

MiB = 1 << 20

_HANDLER_KINDS = {  # (request_streaming, response_streaming) -> the handler's attribute and its constructor
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class ParseInterceptor(grpc.ServerInterceptor):
    """Requests are parsed in the handler, not by grpc-python before it.

    grpc-python deserializes a request before any interceptor or handler runs, and answers a message that does not
    parse with INTERNAL (logging a traceback) before authentication. Installed innermost, this interceptor gives
    every registered method (KeyStore, Recovery, health, reflection: whatever the generated `add_*_to_server`
    registered, with the deserializer it registered) an identity deserializer, and parses the bytes inside the
    handler with that method's own deserializer (`Message.FromString`); for a streaming request, each message as
    the servicer reads it. So authentication (an outer interceptor) runs first, and a message that does not parse
    raises InvalidArgument, which the status interceptor answers with INVALID_ARGUMENT like any bad request."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        attr, make = _HANDLER_KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]
        behavior = getattr(handler, attr)
        parse = _parser(handler.request_deserializer, handler_call_details.method.rsplit("/", 1)[-1])
        if handler.request_streaming:
            def wrapper(raw_requests, context):
                return behavior((parse(raw) for raw in raw_requests), context)
        else:
            def wrapper(raw_request, context):
                return behavior(parse(raw_request), context)
        return make(wrapper, request_deserializer=None, response_serializer=handler.response_serializer)


def _parser(deserialize: Callable[[bytes], object], method: str) -> Callable[[bytes], object]:
    def parse(raw: bytes):
        try:
            return deserialize(raw)
        except DecodeError:  # truncated, a bad tag or wire type, invalid UTF-8 in a string, nested too deep...
            raise InvalidArgument(f"{method}: the request message ({len(raw)} bytes) does not parse") from None

    return parse


@dataclass(frozen=True)
class Listen:
    host: str  # listen address
    port: int  # gRPC port; 0 picks a free one
    metrics_port: int  # Prometheus port; 0 picks a free one, -1 disables
    health_port: int  # plaintext health-only port; 0 picks a free one, -1 disables
    workers: int  # handler threads
    max_message_bytes: int  # largest request/response


def check_listen(listen: Listen) -> None:
    """Fail fast on out-of-range listener settings."""
    if not 0 <= listen.port <= 65535:
        raise InvalidArgument(f"port {listen.port} is out of range")
    for name in ("metrics_port", "health_port"):
        if not -1 <= getattr(listen, name) <= 65535:
            raise InvalidArgument(f"{name} {getattr(listen, name)} is out of range")
    if listen.workers < 1:
        raise InvalidArgument("workers must be >= 1")
    if listen.max_message_bytes < MiB:
        raise InvalidArgument("max_message_bytes must be at least 1 MiB")


class GrpcService:
    def __init__(self, listen: Listen, security: Security, metrics: ServiceMetrics, service_name: str,
                 add_servicers: Callable[[grpc.Server], None]):
        self.listen = listen
        self.service_name = service_name
        options = [("grpc.max_receive_message_length", listen.max_message_bytes),
                   ("grpc.max_send_message_length", listen.max_message_bytes), ("grpc.so_reuseport", 0)]
        interceptors = [StatusInterceptor(metrics)]
        if security.credentials is not None:
            interceptors.append(AuthInterceptor(security.credentials))
        interceptors.append(ParseInterceptor())  # innermost: requests are parsed after authentication
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=listen.workers, thread_name_prefix="rpc"),
                                 interceptors=interceptors, options=options,
                                 maximum_concurrent_rpcs=listen.workers * 4)
        add_servicers(self._grpc)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection((service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        creds = security.server_credentials()
        address = f"{listen.host}:{listen.port}"
        self.port = self._grpc.add_secure_port(address, creds) if creds else self._grpc.add_insecure_port(address)
        if self.port == 0:
            raise InvalidArgument(f"cannot listen on {address}")
        self.health_port = None
        self._health_grpc = None
        if listen.health_port >= 0:  # health only, no credentials: it reveals nothing but SERVING
            self._health_grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                                            interceptors=[StatusInterceptor(metrics), ParseInterceptor()])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_grpc)
            self.health_port = self._health_grpc.add_insecure_port(f"{listen.host}:{listen.health_port}")
        self.metrics_port = None
        self._http = None
        if listen.metrics_port >= 0:
            self._http, _ = metrics.serve_http(listen.host, listen.metrics_port, security.http_tls())
            self.metrics_port = self._http.server_port
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.listen.host}:{self.port}"

    def start(self) -> None:
        self._grpc.start()
        if self._health_grpc is not None:
            self._health_grpc.start()
        for name in ("", self.service_name):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> bool:
        """Drain calls and close the listeners; False if it was already stopped."""
        if self._stopped.is_set():
            return False
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self._grpc.stop(grace).wait()
        if self._health_grpc is not None:
            self._health_grpc.stop(0).wait()
        if self._http is not None:
            self._http.shutdown()
        return True


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (main thread only)."""
    done = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()


def run_until_signal(server, banner: str) -> None:
    """Start-up banner, wait for SIGTERM/SIGINT, then the server's graceful stop."""
    print(banner + (f", metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""), flush=True)
    try:
        wait_for_signal()
    finally:
        server.stop()
