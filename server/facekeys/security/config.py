"""Security settings of a service and their assembly from mounted files. Every path is checked at start-up:
a missing or unreadable secret stops the server with a clear message, never a silently weaker mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc

from facekeys.errors import InvalidArgument

from .audit import AuditLog
from .credentials import CredentialStore
from .crypto import Keyring, LocalKeyProvider
from .grants import GrantSigner
from .transform import KeyTransform, load_secret

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class HttpTls:
    """An HTTP endpoint (metrics) over HTTPS: the gRPC listener's certificate and, for mutual TLS, its client CA."""

    cert: Path
    key: Path
    client_ca: Optional[Path] = None


@dataclass(frozen=True)
class SecurityConfig:
    tls_cert: Optional[Path] = None  # PEM server certificate (chain)
    tls_key: Optional[Path] = None  # PEM private key of the certificate
    tls_client_ca: Optional[Path] = None  # set: mutual TLS, clients must present a certificate from this CA
    credentials_file: Optional[Path] = None  # tokens (hashed) and roles; `facekeys creds issue` writes it
    grant_key_file: Optional[Path] = None  # Ed25519 private key (PEM) signing reveal grants
    grant_ttl: float = 300.0  # seconds a reveal grant stays valid
    audit_log: Optional[Path] = None  # tamper-evident audit log (JSON lines + .head)
    audit_key_file: Optional[Path] = None  # HMAC key of the audit log (>= 16 bytes)
    transform_secret_file: Optional[Path] = None  # per-deployment key transform secret (>= 16 bytes)
    master_key_file: Optional[Path] = None  # 32-byte master key: encryption at rest (per-identity data keys)
    insecure: bool = False  # allow a non-loopback listener without TLS and credentials (never in production)

    @property
    def authenticated(self) -> bool:
        return self.credentials_file is not None

    def check(self, host: str) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("give both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidArgument("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if (self.audit_log is None) != (self.audit_key_file is None):
            raise InvalidArgument("give both --audit-log and --audit-key-file")
        if self.authenticated and self.audit_log is None:
            raise InvalidArgument("an authenticated server must keep an audit log: give --audit-log and --audit-key-file")
        if self.grant_ttl <= 0:
            raise InvalidArgument("grant_ttl must be > 0")
        exposed = host not in LOOPBACK
        if exposed and not self.insecure and (self.tls_cert is None or not self.authenticated):
            raise InvalidArgument(
                f"refusing to listen on {host} without TLS and credentials: give --tls-cert/--tls-key and "
                f"--credentials-file (and --audit-log/--audit-key-file), or --insecure for a closed test network")


class Security:
    """The loaded security objects of one service (any may be None when not configured)."""

    def __init__(self, cfg: SecurityConfig, data_dir: Path):
        self.config = cfg
        self.credentials = CredentialStore(cfg.credentials_file) if cfg.credentials_file else None
        if self.credentials is not None and not cfg.credentials_file.exists():
            raise InvalidArgument(f"credentials file {cfg.credentials_file} does not exist; "
                                  f"create one with `facekeys creds issue --file {cfg.credentials_file} ...`")
        self.grants = GrantSigner.from_file(cfg.grant_key_file, cfg.grant_ttl) if cfg.grant_key_file else None
        self.audit = AuditLog(cfg.audit_log, load_secret(cfg.audit_key_file)) if cfg.audit_log else None
        self.transform = KeyTransform(load_secret(cfg.transform_secret_file)) if cfg.transform_secret_file else None
        self.cipher = (Keyring(Path(data_dir) / "keyring", LocalKeyProvider.from_file(cfg.master_key_file))
                       if cfg.master_key_file else None)

    def http_tls(self) -> Optional[HttpTls]:
        """The metrics endpoint's TLS: the same certificate (and client CA) as the gRPC listener; None without TLS.
        A listener beyond loopback has TLS unless `insecure` (SecurityConfig.check), so its metrics do too."""
        cfg = self.config
        if cfg.tls_cert is None:
            return None
        return HttpTls(Path(cfg.tls_cert), Path(cfg.tls_key), Path(cfg.tls_client_ca) if cfg.tls_client_ca else None)

    def server_credentials(self) -> Optional[grpc.ServerCredentials]:
        cfg = self.config
        if cfg.tls_cert is None:
            return None
        try:
            pair = (Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())
            ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
        except OSError as e:
            raise InvalidArgument(f"cannot read TLS file: {e}") from None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
        if self.cipher is not None:
            self.cipher.close()
