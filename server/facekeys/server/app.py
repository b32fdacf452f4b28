"""Assemble and run the key store service: engine + gRPC (+ health, reflection) + Prometheus."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from grpc_health.v1 import health_pb2

from facekeys.layers import parse_layers
from facekeys.security.audit import StoreAnchor
from facekeys.security.config import Security, SecurityConfig
from facekeys.store import KeyStore, StoreConfig
from facekeys.v1 import keystore_pb2, keystore_pb2_grpc

from .metrics import ServiceMetrics
from .service import GrpcService, Listen, check_listen, run_until_signal
from .servicer import KeyStoreServicer, denial_recorder

log = logging.getLogger("facekeys.server")

MiB = 1 << 20
SERVICE_NAME = keystore_pb2.DESCRIPTOR.services_by_name["KeyStore"].full_name  # facekeys.v1.KeyStore
AUDIT_HEALTH = "facekeys.audit"  # health status of the audit log: NOT_SERVING once it failed verification


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("facekeys-data")  # LMDB lives in <data_dir>/lmdb
    host: str = "127.0.0.1"  # listen address; 0.0.0.0 to serve other machines (needs TLS + credentials)
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
        check_listen(self.listen)
        parse_layers(self.default_layers)

    @property
    def listen(self) -> Listen:
        return Listen(self.host, self.port, self.metrics_port, self.health_port, self.workers,
                      self.max_message_bytes)


class KeyStoreServer:
    """A running service. `stop()` drains calls, closes the store and the metrics endpoint."""

    def __init__(self, config: ServerConfig, store: Optional[KeyStore] = None, encoder=None):
        self.config = config
        self.security = sec = Security(config.security, Path(config.data_dir))
        try:
            self.store = store or KeyStore.open(Path(config.data_dir) / "lmdb", config.store, cipher=sec.cipher,
                                                transform=sec.transform)
        except BaseException:
            sec.close()
            raise
        self.metrics = ServiceMetrics()
        self.metrics.watch_store(self.store)
        try:
            if sec.audit is not None:
                # verify against the head and the anchor in this store's LMDB; a crash state is repaired and
                # recorded; a tampered log leaves the server up with audited calls refused
                sec.audit.recover(StoreAnchor(self.store))
                self.metrics.watch_audit(sec.audit)
                self.metrics.on_denied = denial_recorder(sec.audit, self.metrics)
            servicer = KeyStoreServicer(self.store, self.metrics, config.default_layers, encoder, sec.audit,
                                        sec.grants)
            self._service = GrpcService(config.listen, sec, self.metrics, SERVICE_NAME,
                                        lambda s: keystore_pb2_grpc.add_KeyStoreServicer_to_server(servicer, s))
            if sec.audit is not None:
                sec.audit.watch(self._audit_health)
        except BaseException:
            self.store.close()
            sec.close()
            raise
        self.port, self.health_port = self._service.port, self._service.health_port
        self.metrics_port = self._service.metrics_port

    def _audit_health(self, ok: bool, state: str) -> None:
        # GrpcService has no public setter for a further health name yet: its health servicer is used directly
        self._service._health.set(AUDIT_HEALTH, health_pb2.HealthCheckResponse.SERVING if ok
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)

    @property
    def address(self) -> str:
        return self._service.address

    def start(self) -> "KeyStoreServer":
        self._service.start()
        log.info("key store serving", extra={"address": self.address, "metrics_port": self.metrics_port,
                                             "keys": self.store.stats().keys})
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._service.stop(grace):
            if self.security.audit is not None:
                self.security.audit.release_anchor()  # the anchor lives in the store: committed before it closes
            self.store.close()
            self.security.close()
            log.info("key store stopped")


def serve(config: ServerConfig, encoder=None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    server = KeyStoreServer(config, encoder=encoder).start()
    run_until_signal(server, f"facekeys key store listening on {server.address}")
