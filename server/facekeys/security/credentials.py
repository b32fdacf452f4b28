"""Per-client credentials: bearer tokens stored only as SHA-256 hashes, each with its roles.

Roles: `gateway` may enrol; `investigator` may match; `revealer` may call Recover/Reveal; `admin` may
delete, read stats and records, and manage credentials. One credential may hold several roles. The file
is rewritten atomically (temp + fsync + rename); tokens are shown once, when issued.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from facekeys.errors import InvalidArgument, NotFound

ROLES = ("gateway", "investigator", "revealer", "admin", "recovery")  # recovery: the recovery service itself
TOKEN_PREFIX = "fk_"


@dataclass(frozen=True)
class Credential:
    id: str
    name: str
    roles: tuple[str, ...]
    token_sha256: str
    created: float
    revoked: Optional[float] = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a credential's name and roles (or a client certificate's subject)."""

    name: str
    roles: frozenset


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CredentialStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._creds: dict[str, Credential] = {}
        self.reload()

    def _stamp(self):
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self) -> None:
        self._seen = self._stamp()
        if self._seen is None:
            self._creds = {}
            return
        try:
            raw = json.loads(self.path.read_text())
            creds = {c["id"]: Credential(**{**c, "roles": tuple(c["roles"])}) for c in raw["credentials"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"credentials file {self.path} is unreadable: {e}") from None
        self._creds = creds

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {"credentials": [asdict(c) for c in self._creds.values()]}
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._seen = self._stamp()

    def issue(self, name: str, roles: list[str]) -> tuple[Credential, str]:
        """Create a credential; returns it and the token (shown once, stored only as a hash)."""
        if not name or len(name) > 128:
            raise InvalidArgument("credential name must be 1..128 characters")
        bad = [r for r in roles if r not in ROLES]
        if not roles or bad:
            raise InvalidArgument(f"roles must be some of {', '.join(ROLES)}; got {', '.join(roles) or 'none'}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        cred = Credential(secrets.token_hex(8), name, tuple(sorted(set(roles))), _hash(token), time.time())
        with self._lock:
            self._creds[cred.id] = cred
            self._save()
        return cred, token

    def revoke(self, cred_id: str) -> Credential:
        with self._lock:
            cred = self._creds.get(cred_id)
            if cred is None:
                raise NotFound(f"credential {cred_id!r} not found")
            cred = Credential(**{**asdict(cred), "roles": cred.roles, "revoked": time.time()})
            self._creds[cred_id] = cred
            self._save()
        return cred

    def list(self) -> list[Credential]:
        if self._stamp() != self._seen:
            with self._lock:
                self.reload()
        return sorted(self._creds.values(), key=lambda c: c.created)

    def authenticate(self, token: str) -> Optional[Principal]:
        """The principal for a token, or None if unknown or revoked (constant-time compare per entry)."""
        if self._stamp() != self._seen:  # issued or revoked by `facekeys creds` while serving
            with self._lock:
                self.reload()
        digest = _hash(token)
        found = None
        for c in self._creds.values():
            if hmac.compare_digest(c.token_sha256, digest) and c.revoked is None:
                found = c
        return Principal(found.name, frozenset(found.roles)) if found else None
