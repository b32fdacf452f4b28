"""Assemble and run the recovery service: generator + key store client + grant verifier + gRPC (health,
reflection, status/metrics interceptor, optional authentication) + Prometheus, like `KeyStoreServer`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from prometheus_client import Counter

from facekeys.errors import InvalidArgument
from facekeys.security.config import Security, SecurityConfig
from facekeys.security.grants import GrantVerifier
from facekeys.server.metrics import ServiceMetrics
from facekeys.server.service import GrpcService, Listen, check_listen, run_until_signal
from facekeys.v1 import recovery_pb2, recovery_pb2_grpc

from .engine import KeySource, KeyStoreKeys, RecoveryEngine, load_generator
from .reveal import PlacementConfig
from .servicer import RecoveryServicer
from .video import OutputVideoConfig

log = logging.getLogger("facekeys.recovery")

MiB = 1 << 20
SERVICE_NAME = recovery_pb2.DESCRIPTOR.services_by_name["Recovery"].full_name  # facekeys.v1.Recovery


@dataclass(frozen=True)
class RecoveryConfig:
    checkpoint: Optional[Path] = None  # psp_ffhq_encode.pt (preferred) or stylegan2-ffhq-config-f.pt; required
    keystore: str = "127.0.0.1:50051"  # key store address; latents are read with Get(include_latent=True)
    keystore_token_file: Optional[Path] = None  # bearer token of a `recovery` credential (secured key store)
    keystore_tls_ca: Optional[Path] = None  # PEM CA of the key store's certificate (TLS to the key store)
    keystore_timeout: float = 30.0  # seconds per key store call
    grant_public_key: Optional[Path] = None  # Ed25519 public key (PEM) of the key store's grant signer;
    #                                           None: Recover/Reveal answer FAILED_PRECONDITION
    archive_root: Optional[Path] = None  # obfuscated videos are read only from under this folder
    output_root: Optional[Path] = None  # revealed videos are written only under this folder (not in the archive)
    accept_encoder_ids: tuple[str, ...] = ()  # extra encoder ids whose keys this generator may render; a pSp
    #                                           checkpoint always accepts its own id; a bare StyleGAN2 file with
    #                                           none given accepts any (it cannot tell)
    device: Optional[str] = None  # "cuda", "cpu"; None = CUDA when available
    max_keys: int = 16  # keys per call (each costs one generator pass: ~15 s on 2 CPU cores, < 1 s on a GPU)
    host: str = "127.0.0.1"  # listen address; 0.0.0.0 to serve other machines (needs TLS + credentials)
    port: int = 50052  # gRPC port; 0 picks a free one
    metrics_port: int = 9101  # Prometheus /metrics port; 0 picks a free one, -1 disables
    workers: int = 4  # gRPC handler threads; generator passes run one at a time whatever this is
    max_message_bytes: int = 64 * MiB  # 16 PNGs of 1024x1024 are ~20-30 MB
    placement: PlacementConfig = field(default_factory=PlacementConfig)  # where the face goes in a box
    output: OutputVideoConfig = field(default_factory=OutputVideoConfig)  # codec of revealed videos
    security: SecurityConfig = field(default_factory=SecurityConfig)  # TLS, credentials, audit, key transform

    @property
    def listen(self) -> Listen:
        return Listen(self.host, self.port, self.metrics_port, -1, self.workers, self.max_message_bytes)

    def __post_init__(self):
        self.security.check(self.host)
        if self.security.grant_key_file is not None:
            raise InvalidArgument("the recovery service verifies grants: give it the public key "
                                  "(--grant-public-key), never the signing key")
        check_listen(self.listen)
        if self.max_keys < 1:
            raise InvalidArgument("max_keys must be >= 1")
        if self.keystore_timeout <= 0:
            raise InvalidArgument("keystore_timeout must be > 0")
        if (self.archive_root is None) != (self.output_root is None):
            raise InvalidArgument("give both --archive-root and --output-root, or neither (no Reveal)")


class RecoveryMetrics(ServiceMetrics):
    """The key store's per-method/per-code request metrics, plus the recovery counters."""

    def __init__(self):
        super().__init__()
        self.faces = Counter("facekeys_recovery_faces_generated", "Faces generated (one generator pass per key)",
                             ["rpc"], registry=self.registry)
        self.reveal_frames = Counter("facekeys_reveal_frames", "Video frames written by Reveal",
                                     registry=self.registry)


def _read(path: Optional[Path], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {e.strerror}") from None


def keystore_source(config: RecoveryConfig) -> KeyStoreKeys:
    from facekeys.client import Client

    token = _read(config.keystore_token_file, "key store token file")
    return KeyStoreKeys(Client(config.keystore, timeout=config.keystore_timeout,
                               token=token.decode().strip() if token is not None else None,
                               tls_ca=_read(config.keystore_tls_ca, "key store TLS CA")))


class RecoveryServer:
    """A running recovery service. `generator`/`keys` may be injected (tests); by default they are loaded
    from `config.checkpoint` and connected to `config.keystore`. `stop()` drains calls and closes it all."""

    def __init__(self, config: RecoveryConfig, generator=None, keys: Optional[KeySource] = None,
                 encoder_ids: Optional[frozenset] = None):
        self.config = config
        self.security = sec = Security(config.security, Path(config.output_root or "."))
        self._own_keys = keys is None
        self.keys = None
        try:
            if generator is None:
                if config.checkpoint is None:
                    raise InvalidArgument("the recovery service needs a generator: give --checkpoint")
                generator, encoder_ids = load_generator(config.checkpoint, config.device)
            if encoder_ids is not None or config.accept_encoder_ids:
                encoder_ids = frozenset(encoder_ids or ()) | frozenset(config.accept_encoder_ids)
            verifier = GrantVerifier.from_file(config.grant_public_key) if config.grant_public_key else None
            if verifier is None:
                log.warning("no grant public key: Recover and Reveal will answer FAILED_PRECONDITION")
            self.keys = keys if keys is not None else keystore_source(config)
            self.engine = RecoveryEngine(
                self.keys, generator, verifier=verifier, transform=sec.transform, encoder_ids=encoder_ids,
                archive_root=config.archive_root, output_root=config.output_root, placement=config.placement,
                output=config.output, max_keys=config.max_keys)
            self.metrics = RecoveryMetrics()
            servicer = RecoveryServicer(self.engine, self.metrics, sec.audit)
            self._service = GrpcService(config.listen, sec, self.metrics, SERVICE_NAME,
                                        lambda s: recovery_pb2_grpc.add_RecoveryServicer_to_server(servicer, s))
        except BaseException:
            self._close()
            raise
        self.port, self.metrics_port = self._service.port, self._service.metrics_port

    def _close(self) -> None:
        if self._own_keys and self.keys is not None:
            self.keys.close()
        self.security.close()

    @property
    def address(self) -> str:
        return self._service.address

    def start(self) -> "RecoveryServer":
        self._service.start()
        log.info("recovery serving", extra={"address": self.address, "metrics_port": self.metrics_port,
                                            "keystore": self.config.keystore})
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._service.stop(grace):
            self._close()
            log.info("recovery stopped")


def serve(config: RecoveryConfig) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    server = RecoveryServer(config).start()
    run_until_signal(server, f"facekeys recovery listening on {server.address}")
