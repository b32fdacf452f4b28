"""Reveal grants: the key store signs (Ed25519) a short-lived grant naming the matched key ids, the
requester and an expiry; the recovery service verifies it with the public key alone and refuses forged,
expired, replayed or widened grants. Wire form: base64url(payload JSON) "." base64url(signature).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from facekeys.errors import InvalidArgument, PermissionDenied

DEFAULT_TTL = 300.0  # seconds a grant stays valid


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class Grant:
    key_ids: tuple[int, ...]
    identity_id: str
    requester: str
    issued: float
    expires: float
    nonce: str


class GrantSigner:
    def __init__(self, private_key: Ed25519PrivateKey, ttl: float = DEFAULT_TTL):
        if ttl <= 0:
            raise InvalidArgument("grant ttl must be > 0")
        self._key = private_key
        self._ttl = ttl

    @classmethod
    def from_file(cls, path, ttl: float = DEFAULT_TTL) -> "GrantSigner":
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot load grant signing key {path}: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidArgument(f"{path} is not an Ed25519 private key")
        return cls(key, ttl)

    def sign(self, key_ids: Sequence[int], identity_id: str, requester: str, now: float | None = None) -> bytes:
        now = time.time() if now is None else now
        payload = {"k": sorted(int(k) for k in key_ids), "i": identity_id, "r": requester, "t": now,
                   "e": now + self._ttl, "n": _b64(os.urandom(16))}
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._key.sign(body))}".encode()


class GrantVerifier:
    """Verifies grants; remembers used nonces until they expire (replay protection)."""

    def __init__(self, public_key: Ed25519PublicKey, clock_skew: float = 5.0):
        self._key = public_key
        self._skew = clock_skew
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path) -> "GrantVerifier":
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot load grant public key {path}: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidArgument(f"{path} is not an Ed25519 public key")
        return cls(key)

    def verify(self, grant: bytes, requester: str, key_ids: Iterable[int], now: float | None = None) -> Grant:
        """Check signature, expiry, requester and scope, then consume the grant (single use)."""
        now = time.time() if now is None else now
        try:
            body_b64, sig_b64 = grant.decode().split(".")
            body = _unb64(body_b64)
            self._key.verify(_unb64(sig_b64), body)
            p = json.loads(body)
            g = Grant(tuple(p["k"]), p["i"], p["r"], p["t"], p["e"], p["n"])
        except (ValueError, UnicodeDecodeError, KeyError, InvalidSignature):
            raise PermissionDenied("reveal grant is invalid (forged, altered or malformed)") from None
        if now > g.expires:
            raise PermissionDenied("reveal grant has expired; match again")
        if g.issued > now + self._skew:
            raise PermissionDenied("reveal grant is from the future")
        if g.requester != requester:
            raise PermissionDenied("reveal grant was issued to another requester")
        wanted = set(int(k) for k in key_ids)
        if not wanted or not wanted <= set(g.key_ids):
            raise PermissionDenied("requested keys are not covered by the reveal grant")
        with self._lock:
            self._used = {n: e for n, e in self._used.items() if e >= now}
            if g.nonce in self._used:
                raise PermissionDenied("reveal grant was already used")
            self._used[g.nonce] = g.expires
        return g


def generate_keypair(private_path, public_path) -> None:
    key = Ed25519PrivateKey.generate()
    Path(private_path).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(private_path, 0o600)
    Path(public_path).write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
