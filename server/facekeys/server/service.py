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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facekeys.errors import InvalidArgument
from facekeys.security.auth import AuthInterceptor
from facekeys.security.config import Security

from .interceptors import StatusInterceptor
from .metrics import ServiceMetrics

log = logging.getLogger("facekeys.server")

MiB = 1 << 20


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
            self._health_grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_grpc)
            self.health_port = self._health_grpc.add_insecure_port(f"{listen.host}:{listen.health_port}")
        self.metrics_port = None
        self._http = None
        if listen.metrics_port >= 0:
            self._http, _ = metrics.serve_http(listen.host, listen.metrics_port)
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
