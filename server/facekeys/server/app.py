"""Assemble and run the key store service: engine + gRPC (+ health, reflection) + Prometheus."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facekeys.errors import InvalidArgument
from facekeys.layers import parse_layers
from facekeys.security.auth import AuthInterceptor
from facekeys.security.config import Security, SecurityConfig
from facekeys.store import KeyStore, StoreConfig
from facekeys.v1 import keystore_pb2, keystore_pb2_grpc

from .interceptors import StatusInterceptor
from .metrics import ServiceMetrics
from .servicer import KeyStoreServicer

log = logging.getLogger("facekeys.server")

MiB = 1 << 20
SERVICE_NAME = keystore_pb2.DESCRIPTOR.services_by_name["KeyStore"].full_name  # facekeys.v1.KeyStore


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("facekeys-data")  # LMDB lives in <data_dir>/lmdb
    host: str = "127.0.0.1"  # listen address; 0.0.0.0 to serve other machines
    port: int = 50051  # gRPC port; 0 picks a free one
    metrics_port: int = 9100  # Prometheus /metrics port; 0 picks a free one, -1 disables
    health_port: int = -1  # plaintext listener serving ONLY grpc.health.v1 (for probes that cannot do TLS,
    #                        e.g. Kubernetes gRPC probes); -1 disables, 0 picks a free one
    workers: int = 16  # gRPC handler threads (concurrent calls, including open enrol streams)
    max_message_bytes: int = 64 * MiB  # largest request/response; a batch of 1,000 float32 keys is ~37 MB
    default_layers: str = "high:4"  # layer subset when a Match names none (paper: coarse layers work best)
    encoder_checkpoint: Optional[Path] = None  # psp_ffhq_encode.pt enables image Enroll/Match
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def __post_init__(self):
        self.security.check(self.host)
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port {self.port} is out of range")
        for name in ("metrics_port", "health_port"):
            if not -1 <= getattr(self, name) <= 65535:
                raise InvalidArgument(f"{name} {getattr(self, name)} is out of range")
        if self.workers < 1:
            raise InvalidArgument("workers must be >= 1")
        if self.max_message_bytes < MiB:
            raise InvalidArgument("max_message_bytes must be at least 1 MiB")
        parse_layers(self.default_layers)


class KeyStoreServer:
    """A running service. `stop()` drains calls, closes the store and the metrics endpoint."""

    def __init__(self, config: ServerConfig, store: Optional[KeyStore] = None, encoder=None):
        self.config = config
        self.security = sec = Security(config.security, Path(config.data_dir))
        self.store = store or KeyStore.open(Path(config.data_dir) / "lmdb", config.store, cipher=sec.cipher,
                                            transform=sec.transform)
        self.metrics = ServiceMetrics()
        self.metrics.watch_store(self.store)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
            interceptors=[StatusInterceptor(self.metrics)]
            + ([AuthInterceptor(sec.credentials)] if sec.credentials is not None else []),
            options=options,
            maximum_concurrent_rpcs=config.workers * 4,
        )
        keystore_pb2_grpc.add_KeyStoreServicer_to_server(
            KeyStoreServicer(self.store, self.metrics, config.default_layers, encoder, sec.audit, sec.grants),
            self._grpc)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        creds = sec.server_credentials()
        listen = f"{config.host}:{config.port}"
        self.port = (self._grpc.add_secure_port(listen, creds) if creds is not None
                     else self._grpc.add_insecure_port(listen))
        if self.port == 0:
            raise InvalidArgument(f"cannot listen on {config.host}:{config.port}")
        self.health_port = None
        self._health_grpc = None
        if config.health_port >= 0:  # health only, no credentials needed: it reveals nothing but SERVING
            self._health_grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_grpc)
            self.health_port = self._health_grpc.add_insecure_port(f"{config.host}:{config.health_port}")
        self.metrics_port = None
        self._http = None
        if config.metrics_port >= 0:
            self._http, _ = self.metrics.serve_http(config.host, config.metrics_port)
            self.metrics_port = self._http.server_port
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> "KeyStoreServer":
        self._grpc.start()
        if self._health_grpc is not None:
            self._health_grpc.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("key store serving", extra={"address": self.address, "metrics_port": self.metrics_port,
                                             "keys": self.store.stats().keys})
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self._grpc.stop(grace).wait()
        if self._health_grpc is not None:
            self._health_grpc.stop(0).wait()
        if self._http is not None:
            self._http.shutdown()
        self.store.close()
        self.security.close()
        log.info("key store stopped")

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT (main thread only)."""
        done = threading.Event()

        def on_signal(signum, frame):
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        done.wait()


def serve(config: ServerConfig, encoder=None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    server = KeyStoreServer(config, encoder=encoder).start()
    print(f"facekeys key store listening on {server.address}"
          + (f", metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""), flush=True)
    try:
        server.wait_for_signal()
    finally:
        server.stop()
