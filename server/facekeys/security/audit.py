"""Tamper-evident audit log: JSON lines, each record chained to the previous by SHA-256 and
authenticated by HMAC under the deployment's audit key. Appends are fsync'd before the audited call returns.

Record: {"seq", "ts", "who", "action", "what", "decision", "ids", "prev", "hash", "mac"}. Never a latent.

Two authenticated pointers to the last record guard against shortening, both HMAC'd under the audit key
(so they cannot be forged without it):
- the head, `<log>.head`: {"seq", "hash", "mac"}, replaced atomically after every append;
- the anchor, kept outside the log's directory (the server keeps it in the key store's LMDB, setting
  "audit-anchor"): the same triple, committed after the head by a writer thread that coalesces concurrent
  appends into one LMDB commit (it trails the head by about one commit, never passes it). It only moves
  forward, so a log and head rolled back together to an older copy, or both deleted, fall short of it.

An append writes, in order: record (fsync), head (temp file, fsync, rename, fsync of the directory),
then hands the point to the anchor writer. So anchor <= head <= log at every instant, and a crash leaves one
of two states, both repaired by `AuditLog.recover` (at server start, or lazily before the first append) and
recorded as an "AuditRecovery" record:
- recovered-from-crash: exactly one complete, chained, MAC-valid record past the head (the head is
  rewritten);
- torn-tail: an incomplete or unauthenticated last line right after the record the head names (it is cut
  off: that call never returned).
Any other disagreement is tampering (or damage) and is not repaired: `verify` names it (truncated,
rolled-back, missing, edited, reordered, removed, bad-mac), and an AuditLog in that state refuses to append,
so the calls that need an audit record fail (FAILED_PRECONDITION) until an operator resolves it.

Several processes (the server, the credentials CLI) may append: each append holds an exclusive flock on
the log and re-reads the head under it; `verify` of a log file takes a shared lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

from facekeys.errors import FacekeysError, FailedPrecondition, InvalidArgument, Unavailable

log = logging.getLogger("facekeys.audit")

GENESIS = "0" * 64
ANCHOR_SETTING = "audit-anchor"  # the key store setting that holds the anchor
_HEAD_DOMAIN = b"facekeys-audit-head\x00"
_ANCHOR_DOMAIN = b"facekeys-audit-anchor\x00"

OK = "ok"
RECOVERED = "recovered-from-crash"  # one complete record past the head: repairable
TORN = "torn-tail"  # a partial/unauthenticated last line past the head: repairable
TRUNCATED = "truncated"  # fewer records than the head (or anchor) names
ROLLED_BACK = "rolled-back"  # log and head agree, but the anchor is further along (or names another chain)
MISSING = "missing"  # the log or its head is gone while records are known to exist
EDITED = "edited"  # a record that fails its hash or MAC (not at the very end), or a substituted record
REORDERED = "reordered"  # authentic records out of order (or repeated)
REMOVED = "removed"  # authentic records with a gap: records removed from the middle
BAD_MAC = "bad-mac"  # the head or the anchor is not authentic (forged, edited, or another audit key)
CRASH_STATES = (RECOVERED, TORN)
STATES = (OK, RECOVERED, TORN, TRUNCATED, ROLLED_BACK, MISSING, EDITED, REORDERED, REMOVED, BAD_MAC)


def _canonical(rec: dict) -> bytes:
    body = {k: rec[k] for k in ("seq", "ts", "who", "action", "what", "decision", "ids", "prev")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Point:
    """A position in the chain: the last record's sequence number and hash (0, GENESIS: empty log)."""

    seq: int
    hash: str


def _point_mac(key: bytes, domain: bytes, p: Point) -> str:
    return hmac.new(key, domain + f"{p.seq}:{p.hash}".encode(), hashlib.sha256).hexdigest()


def seal_point(key: bytes, domain: bytes, p: Point) -> bytes:
    return json.dumps({"seq": p.seq, "hash": p.hash, "mac": _point_mac(key, domain, p)}).encode()


class _NotAuthentic(Exception):
    """A head or anchor that cannot be trusted; `legacy`: a well-formed head of the older, MAC-less format."""

    def __init__(self, why: str, point: Optional[Point] = None, legacy: bool = False):
        super().__init__(why)
        self.point = point
        self.legacy = legacy


def open_point(key: bytes, domain: bytes, raw: bytes) -> Point:
    try:
        d = json.loads(raw)
        p = Point(int(d["seq"]), str(d["hash"]))
    except (ValueError, KeyError, TypeError) as e:
        raise _NotAuthentic(f"not a valid pointer ({type(e).__name__})") from None
    if "mac" not in d:
        raise _NotAuthentic("has no MAC (older format, or written without the key)", p, legacy=True)
    if not isinstance(d["mac"], str) or not hmac.compare_digest(d["mac"], _point_mac(key, domain, p)):
        raise _NotAuthentic("MAC mismatch (forged or edited, or a different audit key)")
    return p


@dataclass(frozen=True)
class VerifyReport:
    state: str  # one of STATES
    records: int  # authentic, chained records from the first line
    problem: str = ""  # what is wrong (or what a crash left), with the line number
    head: Optional[int] = None  # the head's sequence number (None: no head file)
    anchor: Optional[int] = None  # the anchor's sequence number (None: none given or none stored)
    anchor_checked: bool = False  # an anchor source was given
    valid_bytes: int = 0  # length of the authentic prefix (where a torn tail starts)
    last_hash: str = GENESIS  # hash of the last authentic record
    legacy_head: bool = False  # the head is of the older MAC-less format
    repaired: str = ""  # set by AuditLog.recover: the crash state it repaired

    @property
    def ok(self) -> bool:
        """Intact and nothing to repair."""
        return self.state == OK

    @property
    def intact(self) -> bool:
        """No sign of tampering: ok, or a crash state that `AuditLog.recover` repairs."""
        return self.state == OK or self.state in CRASH_STATES


@dataclass(frozen=True)
class _Scan:
    records: int
    valid_bytes: int
    last: str
    hashes: dict  # seq -> hash, for the sequence numbers asked for
    bad: Optional[tuple] = None  # (state-or-kind, line number, why, at_end, complete)


def _check_line(line: bytes, key: bytes) -> tuple[Optional[dict], str]:
    try:
        rec = json.loads(line)
        body = _canonical(rec)
        int(rec["seq"])
    except (ValueError, KeyError, TypeError):
        return None, "not a valid record"
    if not isinstance(rec.get("mac"), str) or not hmac.compare_digest(
            rec["mac"], hmac.new(key, body, hashlib.sha256).hexdigest()):
        return None, "MAC mismatch"
    if rec.get("hash") != hashlib.sha256(body).hexdigest():
        return None, "hash mismatch"
    return rec, ""


def _scan(path: Path, key: bytes, want: set) -> _Scan:
    seq, prev, offset, hashes = 0, GENESIS, 0, {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            complete = line.endswith(b"\n")
            rec, why = _check_line(line, key) if complete else (None, "incomplete line (no newline)")
            if rec is not None and rec["seq"] == seq + 1 and rec["prev"] == prev:
                seq, prev = rec["seq"], rec["hash"]
                offset += len(line)
                if seq in want:
                    hashes[seq] = prev
                continue
            rest = f.read()
            if rec is None:
                return _Scan(seq, offset, prev, hashes, ("bad", n, why, not rest, complete))
            later = {r["seq"] for r, _ in (_check_line(x, key) for x in rest.splitlines(keepends=True)) if r}
            if rec["seq"] == seq + 1:
                kind, why = EDITED, f"record {rec['seq']} does not follow record {seq} (substituted)"
            elif rec["seq"] > seq + 1 and seq + 1 not in later:
                kind, why = REMOVED, f"record {seq + 1} is missing (next is {rec['seq']}: removed)"
            else:
                kind, why = REORDERED, f"record {rec['seq']} where record {seq + 1} belongs (reordered)"
            return _Scan(seq, offset, prev, hashes, (kind, n, why, not rest, complete))
    return _Scan(seq, offset, prev, hashes)


def head_path_of(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".head")


def verify(path: Path, key: bytes, anchor: Optional[bytes] = None, *, anchor_checked: Optional[bool] = None,
           accept_legacy_head: bool = False) -> VerifyReport:
    """Classify the log at `path` against its head and, if given, the anchor value (bytes as stored; None
    with anchor_checked=True: an anchor source with nothing stored yet). Reads only; see STATES."""
    path = Path(path)
    checked = anchor is not None if anchor_checked is None else anchor_checked
    head_file = head_path_of(path)
    r = dict(anchor_checked=checked)

    head: Optional[Point] = None
    if head_file.exists():
        try:
            head = open_point(key, _HEAD_DOMAIN, head_file.read_bytes())
        except _NotAuthentic as e:
            if not (e.legacy and accept_legacy_head):
                return VerifyReport(BAD_MAC, 0, f"head file {head_file.name} {e}", legacy_head=e.legacy, **r)
            head = e.point
        r["head"] = head.seq
    anch: Optional[Point] = None
    if anchor is not None:
        try:
            anch = open_point(key, _ANCHOR_DOMAIN, anchor)
        except _NotAuthentic as e:
            return VerifyReport(BAD_MAC, 0, f"anchor {e}", **r)
        r["anchor"] = anch.seq

    if not path.exists():
        if head is not None or (anch is not None and anch.seq > 0):
            known = max(head.seq if head else 0, anch.seq if anch else 0)
            return VerifyReport(MISSING, 0, f"log file missing; {known} records are known to have existed", **r)
        return VerifyReport(OK, 0, **r)

    hs = head.seq if head is not None else 0
    scan = _scan(path, key, {hs, anch.seq if anch else 0} - {0})
    n = scan.records
    r.update(valid_bytes=scan.valid_bytes, last_hash=scan.last)

    def at(seq: int) -> str:
        return GENESIS if seq == 0 else scan.hashes.get(seq, "")

    torn = False
    if scan.bad is not None:
        kind, line, why, at_end, complete = scan.bad
        if kind != "bad":
            return VerifyReport(kind, n, f"line {line}: {why}", **r)
        if not at_end:
            return VerifyReport(EDITED, n, f"line {line}: {why} (edited, or a different audit key)", **r)
        if n < hs:
            state = TRUNCATED if not complete else EDITED
            return VerifyReport(state, n, f"line {line}: {why}; the head names record {hs}", **r)
        if n > hs:
            return VerifyReport(EDITED, n, f"line {line}: {why} after record {n}, itself past the head ({hs})",
                                **r)
        torn = True

    if head is not None:
        if n < head.seq:
            return VerifyReport(TRUNCATED, n, f"head names record {head.seq}, the log has {n}"
                                + (" (emptied)" if n == 0 else ""), **r)
        if at(head.seq) != head.hash:
            return VerifyReport(EDITED, n, f"record {head.seq} is not the one the head names (substituted)", **r)
        if n > head.seq + 1:
            return VerifyReport(ROLLED_BACK, n, f"the log has {n} records, the head names {head.seq}: the head "
                                "was replaced by an older copy", **r)
    elif n > 1:
        return VerifyReport(MISSING, n, f"head file missing ({n} records in the log)", **r)

    if anch is not None:
        if anch.seq > n:
            state = ROLLED_BACK if head is not None and n >= head.seq else TRUNCATED
            return VerifyReport(state, n, f"the anchor names record {anch.seq}, the log has {n} (log"
                                + (" and head rolled back to an older copy)" if state == ROLLED_BACK else
                                   " shortened)"), **r)
        if at(anch.seq) != anch.hash:
            return VerifyReport(ROLLED_BACK, n, f"record {anch.seq} is not the anchored one: the log was "
                                "replaced by another chain", **r)

    if torn:
        line, why = scan.bad[1], scan.bad[2]
        return VerifyReport(TORN, n, f"line {line}: {why} after record {n} (a write cut short by a crash)", **r)
    if n == hs + 1:
        return VerifyReport(RECOVERED, n, f"record {n} is complete but the head names {hs} (a crash between "
                            "the two writes)", **r)
    return VerifyReport(OK, n, **r)


class Anchor(Protocol):
    """Where the anchor lives, outside the log's directory. `writable` False: verification only."""

    writable: bool

    def load(self) -> Optional[bytes]: ...

    def save(self, value: bytes) -> None: ...

    def describe(self) -> str: ...


class StoreAnchor:
    """The anchor as a setting of a (running) KeyStore's LMDB: one durable commit per append."""

    writable = True

    def __init__(self, store):
        self._store = store

    def load(self) -> Optional[bytes]:
        import lmdb

        try:
            return self._store.get_setting(ANCHOR_SETTING)
        except lmdb.Error as e:
            raise Unavailable(f"the audit anchor cannot be read from the key store ({e})") from e

    def save(self, value: bytes) -> None:
        import lmdb

        try:
            self._store.put_setting(ANCHOR_SETTING, value)
        except lmdb.Error as e:
            raise Unavailable(f"the audit anchor cannot be written to the key store ({e})") from e

    def describe(self) -> str:
        return f"key store setting {ANCHOR_SETTING!r}"


class StoreAnchorReader:
    """The anchor read from a key store's LMDB directory without opening the store (the server may be
    running): for `facekeys audit verify --data-dir`."""

    writable = False

    def __init__(self, lmdb_dir: Path):
        self.lmdb_dir = Path(lmdb_dir)

    def load(self) -> Optional[bytes]:
        from facekeys.store.lmdb_table import read_setting

        return read_setting(self.lmdb_dir, ANCHOR_SETTING)

    def save(self, value: bytes) -> None:
        raise FailedPrecondition(f"the anchor in {self.lmdb_dir} is opened read-only")

    def describe(self) -> str:
        return f"{self.lmdb_dir} setting {ANCHOR_SETTING!r}"


class _AnchorWriter:
    """Moves the anchor forward off the appending threads: each append hands over its point, one thread
    commits the newest pending one (appends that come while a commit runs share the next). So the anchor
    trails the head by the appends of about one LMDB commit (milliseconds under load, none when idle), and an
    append costs no LMDB commit of its own. `flush` waits until the anchor has caught up."""

    def __init__(self, anchor: Anchor, seal: Callable[[Point], bytes]):
        self._anchor, self._seal = anchor, seal
        self._cv = threading.Condition()
        self._pending: Optional[Point] = None
        self._submitted = 0
        self._written = 0
        self._busy = False
        self._stopped = False
        self.error: Optional[str] = None  # the last commit's failure (None once one succeeds)
        self._thread = threading.Thread(target=self._run, name="audit-anchor", daemon=True)
        self._thread.start()

    def submit(self, p: Point) -> None:
        with self._cv:
            if p.seq > self._submitted:
                self._pending, self._submitted = p, p.seq
                self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopped:
                    self._cv.wait()
                if self._pending is None:
                    return
                p, self._pending, self._busy = self._pending, None, True
            error = None
            try:
                self._anchor.save(self._seal(p))
            except (OSError, FacekeysError) as e:
                error = f"audit anchor ({self._anchor.describe()}) could not be written: {e}"
                log.error("%s", error)
            with self._cv:
                self._busy = False
                self.error = error
                if error is None:
                    self._written = max(self._written, p.seq)
                self._cv.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted is committed; Unavailable if the last commit failed."""
        with self._cv:
            done = self._cv.wait_for(lambda: (self._pending is None and not self._busy)
                                     and (self._written >= self._submitted or self.error is not None), timeout)
            if self.error is not None:
                raise Unavailable(self.error)
            if not done:
                raise Unavailable(f"audit anchor ({self._anchor.describe()}) not committed within {timeout:.0f} s")

    def retry(self, p: Point) -> None:
        """After a failed commit: commit `p` now (Unavailable if it fails again)."""
        with self._cv:
            self._submitted = min(self._submitted, self._written)
        self.submit(p)
        self.flush()

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=30)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """Appends to one log. Opening does no I/O beyond the key check: `recover()` (the server calls it at
    start with its anchor; otherwise the first append does) verifies, repairs a crash state, anchors.
    A log found tampered stays refused: `ok` is False and every append raises FailedPrecondition."""

    def __init__(self, path: Path, key: bytes):
        if len(key) < 16:
            raise InvalidArgument("audit key must be at least 16 bytes")
        self.path = Path(path)
        self.head_path = head_path_of(self.path)
        self._key = key
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._anchor: Optional[Anchor] = None
        self._writer: Optional[_AnchorWriter] = None  # moves a writable anchor forward after each append
        self._ready = False
        self._failure: Optional[VerifyReport] = None
        self._last = Point(0, GENESIS)  # the last record this process wrote or recovered
        self._end = 0  # log size after it
        self._head_behind = False  # our last head write failed: the head may lag self._last
        self._listeners: list[Callable[[bool, str], None]] = []
        self.report: Optional[VerifyReport] = None  # the last verification / recovery

    # -- state -------------------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        """Appends are possible (False once the log failed verification)."""
        return self._failure is None

    @property
    def state(self) -> str:
        return self._failure.state if self._failure is not None else OK

    @property
    def failure(self) -> Optional[VerifyReport]:
        return self._failure

    def watch(self, listener: Callable[[bool, str], None]) -> None:
        """`listener(ok, state)` now and on every change (health status, for one)."""
        self._listeners.append(listener)
        listener(self.ok, self.state)

    def _fail(self, report: VerifyReport) -> FailedPrecondition:
        if self._failure is None:
            self._failure = report
            log.error("audit log %s failed verification: %s: %s; audited calls are refused", self.path,
                      report.state, report.problem, extra={"audit_state": report.state})
            for fn in self._listeners:
                fn(False, report.state)
        return self._refusal()

    def _refusal(self) -> FailedPrecondition:
        f = self._failure
        return FailedPrecondition(
            f"audit log failed verification ({f.state}: {f.problem}); calls that must be audited are refused "
            f"until an operator resolves it (`facekeys audit verify`)")

    def check(self) -> None:
        """Raise FailedPrecondition unless audited calls can proceed (recovering first if not yet done)."""
        if not self._ready:
            self.recover()
        if self._failure is not None:
            raise self._refusal()

    # -- recovery ----------------------------------------------------------------------------------
    def recover(self, anchor: Optional[Anchor] = None, who: str = "system") -> VerifyReport:
        """Verify against the head and the anchor; repair a crash state (recording it); anchor the log.
        Returns the report (state OK with `repaired` set, or the failure, which is also kept)."""
        with self._lock:
            if anchor is not None and anchor is not self._anchor:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                self._anchor = anchor
                if anchor.writable:
                    self._writer = _AnchorWriter(anchor, lambda p: seal_point(self._key, _ANCHOR_DOMAIN, p))
            if self._failure is not None:
                return self._failure
            try:
                report = self._recover_locked(who)
            except OSError as e:
                raise Unavailable(f"audit log {self.path} cannot be recovered ({e.strerror})") from e
            self.report = report
            self._ready = True
            if not report.ok:
                self._fail(report)
            elif report.repaired:
                log.warning("audit log %s: %s repaired and recorded (%s)", self.path, report.repaired,
                            report.problem, extra={"audit_state": report.repaired})
            return report

    def _anchor_value(self) -> tuple[Optional[bytes], bool]:
        if self._anchor is None:
            return None, False
        return self._anchor.load(), True

    def _recover_locked(self, who: str) -> VerifyReport:
        if self._fd is None:
            if not self.path.exists():
                value, checked = self._anchor_value()
                report = verify(self.path, self._key, value, anchor_checked=checked)
                if not report.ok:
                    return report  # missing (or a bad head/anchor): create nothing
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            _fsync_dir(self.path.parent)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            value, checked = self._anchor_value()
            report = verify(self.path, self._key, value, anchor_checked=checked)
            upgraded = False
            if report.state == BAD_MAC and report.legacy_head and value is None:
                report = verify(self.path, self._key, value, anchor_checked=checked, accept_legacy_head=True)
                upgraded = report.intact
            if not report.intact:
                return report
            if report.state == TORN:
                dropped = os.fstat(self._fd).st_size - report.valid_bytes
                os.ftruncate(self._fd, report.valid_bytes)
                os.fsync(self._fd)
            self._last, self._end = Point(report.records, report.last_hash), report.valid_bytes
            if report.state == RECOVERED or upgraded:
                self._write_head(self._last)
            if report.state in CRASH_STATES:
                what = {"state": report.state, "records": report.records, "detail": report.problem}
                if report.state == TORN:
                    what["dropped_bytes"] = dropped
                self._append_locked(who, "AuditRecovery", what, report.state, [])
            if upgraded:
                self._append_locked(who, "AuditRecovery", {"state": "upgraded-head", "records": report.records,
                                                           "detail": "head rewritten with its MAC"},
                                    "upgraded-head", [])
            if checked and value is None and self._anchor.writable:
                self._append_locked(who, "AuditAnchor", {"anchor": self._anchor.describe(),
                                                         "records": self._last.seq}, "anchored", [])
            elif checked and self._anchor.writable:
                self._save_anchor()  # catch up (records appended by other processes, or a crash before it)
            if self._writer is not None:
                self._writer.flush()  # anchored before serving
            return replace(report, state=OK, records=self._last.seq, head=self._last.seq,
                           anchor=self._last.seq if checked and self._anchor.writable else report.anchor,
                           valid_bytes=self._end, last_hash=self._last.hash,
                           repaired=report.state if report.state != OK else ("upgraded-head" if upgraded else ""))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- appends -----------------------------------------------------------------------------------
    def append(self, who: str, action: str, what: dict, decision: str = "", ids: Optional[list] = None) -> dict:
        """Append one record durably. Raises Unavailable if it cannot be written, FailedPrecondition if the
        log failed verification: either way the audited call must fail."""
        if not self._ready:
            self.recover()
        with self._lock:
            if self._failure is not None:
                raise self._refusal()
            if self._writer is not None and self._writer.error is not None:
                self._writer.retry(self._last)  # the anchor fell behind: no further records until it is written
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as e:
                raise Unavailable(f"audit log cannot be locked ({e.strerror})") from e
            try:
                return self._append_locked(who, action, what, decision, ids)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _current(self) -> Point:
        """The chain's end under the lock: the head (another process may have appended), checked."""
        try:
            raw = self.head_path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as e:
            raise Unavailable(f"audit head cannot be read ({e.strerror})") from e
        if raw is None:
            head = Point(0, GENESIS)
            if self._last.seq > 0 and not (self._head_behind and self._last.seq == 1):
                raise self._fail(VerifyReport(MISSING, self._last.seq, "head file deleted while serving"))
        else:
            try:
                head = open_point(self._key, _HEAD_DOMAIN, raw)
            except _NotAuthentic as e:
                raise self._fail(VerifyReport(BAD_MAC, self._last.seq, f"head file {e} (replaced while serving)"))
        size = os.fstat(self._fd).st_size
        if head.seq < self._last.seq:
            if self._head_behind:
                return self._last
            raise self._fail(VerifyReport(ROLLED_BACK, self._last.seq, f"head went back from record "
                                          f"{self._last.seq} to {head.seq} while serving"))
        if size < self._end:
            raise self._fail(VerifyReport(TRUNCATED, self._last.seq, f"log shrank from {self._end} to {size} "
                                          "bytes while serving"))
        return head

    def _append_locked(self, who, action, what, decision, ids) -> dict:
        cur = self._current()
        rec = {"seq": cur.seq + 1, "ts": round(time.time(), 6), "who": who, "action": action, "what": what,
               "decision": decision, "ids": list(ids or []), "prev": cur.hash}
        body = _canonical(rec)
        rec["hash"] = hashlib.sha256(body).hexdigest()
        rec["mac"] = hmac.new(self._key, body, hashlib.sha256).hexdigest()
        line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            self._undo(start)
            raise Unavailable(f"audit log write failed ({e.strerror}); the call was refused") from e
        self._last, self._end = Point(rec["seq"], rec["hash"]), start + len(line)
        try:
            self._write_head(self._last)
        except OSError as e:
            self._head_behind = True
            raise Unavailable(f"audit head write failed ({e.strerror}); the call was refused") from e
        self._head_behind = False
        self._save_anchor()
        return rec

    def _undo(self, start: int) -> None:
        """Cut a failed write back off, so no partial line stays in front of the next record."""
        try:
            os.ftruncate(self._fd, start)
            os.fsync(self._fd)
        except OSError as e:
            self._fail(VerifyReport(TORN, self._last.seq, f"a failed write could not be cut off ({e.strerror}); "
                                    "restart the server to repair the log"))

    def _write_head(self, p: Point) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, seal_point(self._key, _HEAD_DOMAIN, p))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)
        _fsync_dir(self.head_path.parent)

    def _save_anchor(self) -> None:
        if self._writer is not None:
            self._writer.submit(self._last)

    def flush_anchor(self) -> None:
        """Wait until the anchor names the last record (Unavailable if it cannot be written)."""
        if self._writer is not None:
            self._writer.flush()

    def release_anchor(self) -> None:
        """Commit the anchor and stop writing it (before the store that holds it closes)."""
        with self._lock:
            if self._writer is not None:
                try:
                    self._writer.flush()
                finally:
                    self._writer.close()
                    self._writer = None

    def close(self) -> None:
        self.release_anchor()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)


def verify_locked(path: Path, key: bytes, anchor: Optional[Anchor] = None) -> VerifyReport:
    """`verify` under a shared lock on the log (waits for an append in flight), reading the anchor inside it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return verify(path, key, anchor.load() if anchor else None, anchor_checked=anchor is not None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return verify(path, key, anchor.load() if anchor else None, anchor_checked=anchor is not None)
    finally:
        os.close(fd)


def seal_anchor(key: bytes, p: Point) -> bytes:
    """An anchor value for `p` (operator tools and tests)."""
    return seal_point(key, _ANCHOR_DOMAIN, p)
