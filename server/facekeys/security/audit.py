"""Tamper-evident audit log: JSON lines, each record chained to the previous by SHA-256 and
authenticated by HMAC under the deployment's audit key; a head file records the last sequence number
and hash, so truncation is detected too. Appends are fsync'd before the audited call returns.

Record: {"seq", "ts", "who", "action", "what", "decision", "ids", "prev", "hash", "mac"}.
Never the latent itself. Several processes (the server, the credentials CLI) may append: each append
holds an exclusive lock on the log and re-reads the head under it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from facekeys.errors import InvalidArgument, Unavailable

GENESIS = "0" * 64


def _canonical(rec: dict) -> bytes:
    body = {k: rec[k] for k in ("seq", "ts", "who", "action", "what", "decision", "ids", "prev")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    problem: str = ""  # first problem found, with the line number


class AuditLog:
    def __init__(self, path: Path, key: bytes):
        if len(key) < 16:
            raise InvalidArgument("audit key must be at least 16 bytes")
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._key = key
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        report = verify(self.path, key)
        if not report.ok:
            raise Unavailable(f"audit log {self.path} failed verification: {report.problem}; refusing to append")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _read_head(self) -> tuple[int, str]:
        if not self.head_path.exists():
            return 0, GENESIS
        head = json.loads(self.head_path.read_text())
        return head["seq"], head["hash"]

    def append(self, who: str, action: str, what: dict, decision: str = "", ids: Optional[list] = None) -> dict:
        """Append one record durably; raises Unavailable if it cannot be written (the call must fail)."""
        with self._lock:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as e:
                raise Unavailable(f"audit log cannot be locked ({e.strerror})") from e
            try:
                return self._append_locked(who, action, what, decision, ids)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _append_locked(self, who, action, what, decision, ids) -> dict:
        seq, prev = self._read_head()
        rec = {"seq": seq + 1, "ts": round(time.time(), 6), "who": who, "action": action, "what": what,
               "decision": decision, "ids": list(ids or []), "prev": prev}
        body = _canonical(rec)
        rec["hash"] = hashlib.sha256(body).hexdigest()
        rec["mac"] = hmac.new(self._key, body, hashlib.sha256).hexdigest()
        line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
            tmp = self.head_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"seq": rec["seq"], "hash": rec["hash"]}))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.head_path)
        except OSError as e:
            raise Unavailable(f"audit log write failed ({e.strerror}); the call was refused") from e
        return rec

    def close(self) -> None:
        os.close(self._fd)


def read(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)


def verify(path: Path, key: bytes) -> VerifyReport:
    """Check every record's MAC, hash, sequence and chain, and the head file (truncation)."""
    path = Path(path)
    head_path = path.with_name(path.name + ".head")
    if not path.exists():
        return VerifyReport(not head_path.exists(), 0, "" if not head_path.exists() else "log file missing")
    prev, seq = GENESIS, 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                body = _canonical(rec)
            except (ValueError, KeyError, TypeError):
                return VerifyReport(False, seq, f"line {n}: not a valid record")
            if not hmac.compare_digest(rec.get("mac", ""), hmac.new(key, body, hashlib.sha256).hexdigest()):
                return VerifyReport(False, seq, f"line {n}: MAC mismatch (edited, or a different audit key)")
            if rec.get("hash") != hashlib.sha256(body).hexdigest():
                return VerifyReport(False, seq, f"line {n}: hash mismatch")
            if rec["seq"] != seq + 1 or rec["prev"] != prev:
                return VerifyReport(False, seq, f"line {n}: chain broken (record removed or reordered)")
            prev, seq = rec["hash"], rec["seq"]
    if head_path.exists():
        head = json.loads(head_path.read_text())
        if head["seq"] != seq or head["hash"] != prev:
            return VerifyReport(False, seq, f"head says {head['seq']} records, log has {seq} (truncated or rolled back)")
    elif seq:
        return VerifyReport(False, seq, "head file missing")
    return VerifyReport(True, seq)
