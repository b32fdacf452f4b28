"""Prometheus metrics of the key store service, on their own registry (one per server instance)."""

from __future__ import annotations

from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from facekeys.security.config import HttpTls

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "facekeys_requests", "gRPC requests by method and status code", ["method", "code"],
            registry=self.registry)
        self.latency = Histogram(
            "facekeys_request_duration_seconds", "gRPC request latency by method and status code",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.decisions = Counter(
            "facekeys_match_decisions", "Match decisions per probe", ["decision"], registry=self.registry)
        self.enrolled = Counter("facekeys_enrolled_keys", "Keys enrolled (durable)", registry=self.registry)
        self.audit_failures = Counter(
            "facekeys_audit_write_failures", "Audit records that could not be written (the call failed)",
            registry=self.registry)
        # the status interceptor calls this with (who, method, code, reason) for each call the auth policy
        # refused; the server sets it to record them in its audit log (servicer.denial_recorder)
        self.on_denied: Optional[Callable[[str, str, str, str], None]] = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def watch_store(self, store) -> None:
        self.registry.register(_StoreCollector(store))

    def watch_audit(self, audit) -> None:
        """`facekeys_audit_ok`: 1 while the audit log verifies and takes appends, 0 once it failed."""
        self.registry.register(_AuditCollector(audit))

    def serve_http(self, host: str, port: int, tls: Optional[HttpTls] = None):
        """Start the /metrics endpoint (HTTPS with `tls`); returns (http_server, thread)."""
        if tls is None:
            return start_http_server(port, addr=host, registry=self.registry)
        return start_http_server(port, addr=host, registry=self.registry, certfile=str(tls.cert),
                                 keyfile=str(tls.key), client_cafile=str(tls.client_ca) if tls.client_ca else None,
                                 client_auth_required=tls.client_ca is not None)


class _StoreCollector:
    """Read the store's gauges at scrape time."""

    def __init__(self, store):
        self._store = store

    def collect(self):
        s = self._store.stats()
        yield GaugeMetricFamily("facekeys_keys_stored", "Keys stored", value=s.keys)
        yield GaugeMetricFamily("facekeys_identities_stored", "Identities stored", value=s.identities)
        yield GaugeMetricFamily("facekeys_index_bytes", "Bytes held by the vector indexes", value=s.index_bytes)
        yield GaugeMetricFamily("facekeys_lmdb_used_bytes", "LMDB bytes in use", value=s.lmdb_used_bytes)
        yield GaugeMetricFamily("facekeys_lmdb_map_bytes", "LMDB map size", value=s.lmdb_map_bytes)


class _AuditCollector:
    def __init__(self, audit):
        self._audit = audit

    def collect(self):
        yield GaugeMetricFamily("facekeys_audit_ok", "1 while the audit log verifies (audited calls are served), "
                                "0 once it failed verification (Match, latent reads and Delete are refused)",
                                value=1 if self._audit.ok else 0)
