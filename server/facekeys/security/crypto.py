"""Encryption at rest: AES-256-GCM under a data key per identity (envelope encryption).

Data keys live in a keyring file of fixed-size slots, each wrapped (AES-GCM) by the master key, which
comes from a `KeyProvider` (a key file, an environment variable read when the provider is built, or a KMS
adapter implementing wrap/unwrap). Erasing an identity overwrites its slot with zeros and fsyncs it
(crypto-shredding): every ciphertext of that identity, wherever its old bytes linger (LMDB free pages,
backups), no longer decrypts.

Identities are never written in the clear: the keyring and the store name an identity by its *token*,
HMAC-SHA256 of the identity id under an index key that the keyring keeps in a slot of its own, wrapped by the
master key. Without the master key a token cannot be computed from a guessed id, so neither file says who
is in it. The keyring file is held with an exclusive lock: one process owns it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import threading
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from facekeys.errors import FailedPrecondition, InvalidArgument, NotFound

SLOT = 128  # bytes per keyring slot: kind(1) | subject(32) | nonce(12) | wrapped key(48) | pad
_EMPTY = b"\0" * SLOT
_LEGACY, _DATA, _INDEX = 1, 2, 3  # slot kinds: data key under sha256(identity) (older keyrings), data key
# under the identity's token, the index key (subject all zeros); 0 is a free slot
_INDEX_AAD = b"facekeys-index-key/v1"
TOKEN_BYTES = 32


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
    """Per-identity data keys in a slot file, addressed by identity token.

    `token(identity)` names an identity; `seal`/`open` values under a token's data key (created on first
    seal), `forget` a token (crypto-shred), `subjects()` lists the tokens that have a key.
    """

    def __init__(self, path: Path, provider: KeyProvider):
        self.path = Path(path)
        self._provider = provider
        self.fingerprint = provider.fingerprint
        self._lock = threading.Lock()
        self._slots: dict[bytes, int] = {}  # token -> slot
        self._legacy: dict[bytes, int] = {}  # sha256(identity) -> slot (keyrings written before tokens)
        self._deks: dict[bytes, AESGCM] = {}
        self._free: list[int] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise FailedPrecondition(f"keyring {self.path} is in use by another process (or another Keyring here)") from None
        try:
            index_slot = self._load()
            self._index_key = self._index(index_slot)
        except BaseException:
            self.close()
            raise

    def _load(self) -> int | None:
        size = os.fstat(self._fd).st_size
        if size % SLOT:
            raise FailedPrecondition(f"keyring {self.path} is damaged (size {size} is not a multiple of {SLOT})")
        raw = os.pread(self._fd, size, 0)
        index_slot = None
        for i in range(size // SLOT):
            s = raw[i * SLOT:(i + 1) * SLOT]
            if s[0] == _DATA:
                self._slots[s[1:33]] = i
            elif s[0] == _LEGACY:
                self._legacy[s[1:33]] = i
            elif s[0] == _INDEX:
                index_slot = i
            else:
                self._free.append(i)
        return index_slot

    def _index(self, slot: int | None) -> bytes:
        """The index key: unwrapped from its slot, or made (and fsync'd) for a new keyring."""
        if slot is not None:
            s = os.pread(self._fd, SLOT, slot * SLOT)
            return self._provider.unwrap(s[33:33 + 60], _INDEX_AAD + slot.to_bytes(8, "big"))
        key = os.urandom(32)
        self._write_slot(_INDEX, bytes(TOKEN_BYTES), key, _INDEX_AAD)
        return key

    def _write_slot(self, kind: int, subject: bytes, key: bytes, aad_prefix: bytes) -> int:
        slot = self._free.pop(0) if self._free else os.fstat(self._fd).st_size // SLOT
        record = bytes([kind]) + subject + self._provider.wrap(key, aad_prefix + slot.to_bytes(8, "big"))
        os.pwrite(self._fd, record.ljust(SLOT, b"\0"), slot * SLOT)
        os.fsync(self._fd)  # the key is on disk before any value sealed with it
        return slot

    def _clear_slot(self, slot: int) -> None:
        os.pwrite(self._fd, _EMPTY, slot * SLOT)
        os.fsync(self._fd)
        self._free.append(slot)

    def token(self, identity: str) -> bytes:
        """(32,) bytes naming `identity` in the keyring and the store: HMAC-SHA256 under the index key."""
        return hmac.new(self._index_key, b"facekeys-identity/v1\0" + identity.encode(), hashlib.sha256).digest()

    def _aead(self, token: bytes, create: bool) -> AESGCM:
        aead = self._deks.get(token)
        if aead is not None:
            return aead
        with self._lock:
            slot = self._slots.get(token)
            if slot is None:
                if not create:
                    raise NotFound("no data key for this identity (erased?)")
                dek = AESGCM.generate_key(256)
                self._slots[token] = self._write_slot(_DATA, token, dek, token)
            else:
                s = os.pread(self._fd, SLOT, slot * SLOT)
                dek = self._provider.unwrap(s[33:33 + 60], token + slot.to_bytes(8, "big"))
            aead = self._deks[token] = AESGCM(dek)
            return aead

    def seal(self, token: bytes, aad: bytes, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead(token, create=True).encrypt(nonce, data, aad)

    def open(self, token: bytes, aad: bytes, blob: bytes) -> bytes:
        try:
            return self._aead(token, create=False).decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise FailedPrecondition("stored value does not decrypt (tampered, or moved between records)") from None

    def has(self, token: bytes) -> bool:
        return token in self._slots

    def subjects(self) -> list[bytes]:
        """The tokens that hold a data key."""
        with self._lock:
            return list(self._slots)

    def forget(self, token: bytes) -> bool:
        """Crypto-shred: overwrite the token's slot with zeros, fsync. True if there was one."""
        with self._lock:
            slot = self._slots.pop(token, None)
            self._deks.pop(token, None)
            if slot is None:
                return False
            self._clear_slot(slot)
            return True

    @property
    def legacy_slots(self) -> int:
        """Data keys still filed under sha256(identity) (a keyring written before tokens)."""
        return len(self._legacy)

    def adopt(self, identity: str) -> bool:
        """Re-file `identity`'s data key from its sha256 slot to its token (same key, so every value sealed with
        it still opens): the new slot is written and fsync'd before the old one is cleared. Idempotent; False when
        there is no such slot."""
        h = hashlib.sha256(identity.encode()).digest()
        token = self.token(identity)
        with self._lock:
            old = self._legacy.get(h)
            if old is None:
                return False
            if token not in self._slots:
                s = os.pread(self._fd, SLOT, old * SLOT)
                dek = self._provider.unwrap(s[33:33 + 60], h + old.to_bytes(8, "big"))
                self._slots[token] = self._write_slot(_DATA, token, dek, token)
            del self._legacy[h]
            self._clear_slot(old)
            return True

    def drop_legacy(self) -> int:
        """Clear the sha256 slots no identity was adopted from (their identities have no values left)."""
        with self._lock:
            slots = list(self._legacy.values())
            self._legacy.clear()
            for slot in slots:
                self._clear_slot(slot)
            return len(slots)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1
