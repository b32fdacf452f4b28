"""Encryption at rest: AES-256-GCM under a data key per identity (envelope encryption).

Data keys live in a keyring file of fixed-size slots, each wrapped (AES-GCM) by the master key, which
comes from a `KeyProvider` (a key file, an environment variable read when the provider is built, or a KMS
adapter implementing wrap/unwrap). Erasing an identity overwrites its slot with zeros and fsyncs it
(crypto-shredding): every ciphertext of that identity, wherever its old bytes linger (LMDB free pages,
backups), no longer decrypts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from facekeys.errors import FailedPrecondition, InvalidArgument, NotFound

SLOT = 128  # bytes per keyring slot: used(1) | identity sha256(32) | nonce(12) | wrapped key(48) | pad
_EMPTY = b"\0" * SLOT


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key it never reveals (KMS-shaped)."""

    fingerprint: str

    def wrap(self, dek: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes: ...


class LocalKeyProvider:
    """A 32-byte master key held in memory (from a file or an environment variable)."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise InvalidArgument(f"master key must be 32 bytes (got {len(key)}); e.g. `openssl rand -hex 32`")
        self._aead = AESGCM(key)
        self.fingerprint = hashlib.sha256(b"facekeys-master/v1" + key).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: bytes) -> "LocalKeyProvider":
        t = text.strip()
        decoders = (lambda v: bytes.fromhex(v.decode()), lambda v: base64.b64decode(v, validate=True))
        for decode in decoders:
            try:
                key = decode(t)
            except ValueError:
                continue
            if len(key) == 32:
                return cls(key)
        if len(text) == 32:
            return cls(text)
        raise InvalidArgument("master key must be 32 bytes: raw, 64 hex characters or base64")

    @classmethod
    def from_file(cls, path) -> "LocalKeyProvider":
        try:
            return cls.from_text(Path(path).read_bytes())
        except OSError as e:
            raise InvalidArgument(f"cannot read master key file {path}: {e.strerror}") from None

    @classmethod
    def from_env(cls, environ, name: str = "FACEKEYS_MASTER_KEY") -> "LocalKeyProvider":
        if name not in environ:
            raise InvalidArgument(f"environment variable {name} is not set")
        return cls.from_text(environ[name].encode())

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, dek, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise FailedPrecondition("a data key does not unwrap: wrong master key, or a tampered keyring") from None


class Keyring:
    """Per-identity data keys in a slot file; `seal`/`open` values, `forget` an identity."""

    def __init__(self, path: Path, provider: KeyProvider):
        self.path = Path(path)
        self._provider = provider
        self.fingerprint = provider.fingerprint
        self._lock = threading.Lock()
        self._slots: dict[bytes, int] = {}  # identity sha256 -> slot
        self._deks: dict[bytes, AESGCM] = {}
        self._free: list[int] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        raw = self.path.read_bytes()
        if len(raw) % SLOT:
            raise FailedPrecondition(f"keyring {self.path} is damaged (size {len(raw)} is not a multiple of {SLOT})")
        for i in range(len(raw) // SLOT):
            s = raw[i * SLOT:(i + 1) * SLOT]
            if s[0] == 1:
                self._slots[s[1:33]] = i
            else:
                self._free.append(i)
        self._fd = os.open(self.path, os.O_RDWR)

    @staticmethod
    def _id(identity: str) -> bytes:
        return hashlib.sha256(identity.encode()).digest()

    def _aead(self, identity: str, create: bool) -> AESGCM:
        h = self._id(identity)
        aead = self._deks.get(h)
        if aead is not None:
            return aead
        with self._lock:
            slot = self._slots.get(h)
            if slot is None:
                if not create:
                    raise NotFound(f"no data key for identity {identity!r} (erased?)")
                dek = AESGCM.generate_key(256)
                slot = self._free.pop(0) if self._free else os.fstat(self._fd).st_size // SLOT
                record = b"\1" + h + self._provider.wrap(dek, h + slot.to_bytes(8, "big"))
                os.pwrite(self._fd, record.ljust(SLOT, b"\0"), slot * SLOT)
                os.fsync(self._fd)  # the key is on disk before any value sealed with it
                self._slots[h] = slot
            else:
                s = os.pread(self._fd, SLOT, slot * SLOT)
                dek = self._provider.unwrap(s[33:33 + 60], h + slot.to_bytes(8, "big"))
            aead = self._deks[h] = AESGCM(dek)
            return aead

    def seal(self, identity: str, aad: bytes, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead(identity, create=True).encrypt(nonce, data, aad)

    def open(self, identity: str, aad: bytes, blob: bytes) -> bytes:
        try:
            return self._aead(identity, create=False).decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise FailedPrecondition("stored value does not decrypt (tampered, or moved between records)") from None

    def forget(self, identity: str) -> bool:
        """Crypto-shred: overwrite the identity's slot with zeros, fsync. True if there was one."""
        h = self._id(identity)
        with self._lock:
            slot = self._slots.pop(h, None)
            self._deks.pop(h, None)
            if slot is None:
                return False
            os.pwrite(self._fd, _EMPTY, slot * SLOT)
            os.fsync(self._fd)
            self._free.append(slot)
            return True

    def close(self) -> None:
        os.close(self._fd)
