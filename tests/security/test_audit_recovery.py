"""The audit log survives crashes and cannot be shortened silently.

Crash states (a record past the head; a torn last line) are repaired at start and recorded. Tampering that
needs no key (drop the newest records and rewrite the head; delete both files; empty the log; roll log and
head back to an older copy; edit the head) is detected against the HMAC'd head and the HMAC'd anchor in the
key store's LMDB, by `facekeys audit verify --data-dir` and by the server, which then refuses audited calls
(Match, latent reads, Delete) but keeps enrolling, and says so in health and metrics. Refused calls (auth
policy; invalid Match/Delete) are audited. All on real files, real stores and real servers on loopback.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from fkhelpers import random_keys, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facekeys.client import Client
from facekeys.errors import (
    FacekeysError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable,
)
from facekeys.records import NewKey
from facekeys.security import audit as A
from facekeys.security.audit import AuditLog, StoreAnchor
from facekeys.security.config import SecurityConfig
from facekeys.security.credentials import CredentialStore
from facekeys.server import KeyStoreServer, ServerConfig
from facekeys.store import KeyStore, StoreConfig

KEY = b"audit-key-for-tests-0123456789ab"


def fk(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "facekeys.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def verify_cli(log: Path, keyfile: Path, data_dir: Path | None = None, *extra):
    p = fk("audit", "verify", "--log", log, "--key-file", keyfile, *(("--data-dir", data_dir) if data_dir else ()),
           *extra, check=False)
    return p.returncode, json.loads(p.stdout.splitlines()[-1]), p.stderr


@pytest.fixture
def env(tmp_path):
    """A key store (LMDB anchor) in data/, the log in audit/ (another directory), 5 records appended."""
    keyfile = tmp_path / "audit.key"
    keyfile.write_bytes(KEY)
    data, log = tmp_path / "data", tmp_path / "audit" / "audit.log"
    store = KeyStore.open(data / "lmdb", StoreConfig(map_size=1 << 26))
    audit = AuditLog(log, KEY)
    assert audit.recover(StoreAnchor(store)).ok
    for i in range(4):
        audit.append("inv", "Match", {"n": i}, "accepted", [i])
    audit.close()
    store.close()
    return dict(tmp=tmp_path, keyfile=keyfile, data=data, log=log, head=A.head_path_of(log))


def reopen(e) -> tuple[AuditLog, KeyStore, A.VerifyReport]:
    store = KeyStore.open(e["data"] / "lmdb", StoreConfig(map_size=1 << 26))
    audit = AuditLog(e["log"], KEY)
    return audit, store, audit.recover(StoreAnchor(store))


def records(log: Path) -> list[dict]:
    return list(A.read(log))


def test_a_clean_log_verifies_with_its_anchor(env):
    code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 0 and out["state"] == "ok" and out["records"] == 5 and out["anchor"] == 5, out
    assert [r["action"] for r in records(env["log"])] == ["AuditAnchor"] + ["Match"] * 4
    code, out, _ = verify_cli(env["log"], env["keyfile"])  # no anchor given: says so
    assert code == 0 and "not checked" in out["anchor"]


# -- crash states ------------------------------------------------------------------------------------
def _head_back_one(e) -> None:
    """The crash between the record's fsync and the head's replace: the head still names the record before."""
    recs = records(e["log"])
    e["head"].write_bytes(A.seal_point(KEY, A._HEAD_DOMAIN, A.Point(recs[-2]["seq"], recs[-2]["hash"])))


def test_record_past_the_head_is_accepted_repaired_and_recorded(env):
    _head_back_one(env)
    code, out, err = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 0 and out["state"] == "recovered-from-crash" and out["ok"], out
    assert "repairs" in err
    audit, store, report = reopen(env)
    try:
        assert report.ok and report.repaired == "recovered-from-crash" and report.records == 6
        last = records(env["log"])[-1]
        assert (last["action"], last["decision"], last["what"]["records"]) == ("AuditRecovery",
                                                                              "recovered-from-crash", 5)
        audit.append("inv", "Match", {}, "refused")
    finally:
        audit.close()
        store.close()
    code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 0 and out["state"] == "ok" and out["records"] == 7 and out["anchor"] == 7


@pytest.mark.parametrize("tail", [b'{"seq": 6, "ts": 1.0, "who": "inv"', b"\0" * 300,
                                  "bad-mac"], ids=["partial-line", "zeros", "complete-line-bad-mac"])
def test_torn_tail_is_cut_back_to_the_last_valid_record_and_recorded(env, tail):
    good = env["log"].read_bytes()
    if tail == "bad-mac":
        rec = json.loads(good.splitlines()[-1])
        rec.update(seq=6, prev=rec["hash"], mac="0" * 64)
        tail = (json.dumps(rec) + "\n").encode()
    env["log"].write_bytes(good + tail)
    code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 0 and out["state"] == "torn-tail", out
    audit, store, report = reopen(env)
    audit.close()
    store.close()
    assert report.ok and report.repaired == "torn-tail"
    assert env["log"].read_bytes().startswith(good)
    last = records(env["log"])[-1]
    assert last["action"] == "AuditRecovery" and last["what"]["dropped_bytes"] == len(tail)
    assert verify_cli(env["log"], env["keyfile"], env["data"])[1]["state"] == "ok"


def test_verify_repair_does_what_the_server_start_does(env):
    env["log"].write_bytes(env["log"].read_bytes() + b'{"partial')
    code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"], "--repair", "--operator", "ops")
    assert code == 0 and out["state"] == "ok" and out["repaired"] == "torn-tail", out
    assert records(env["log"])[-1]["who"] == "ops"
    code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 0 and out["state"] == "ok" and out["anchor"] == 5  # read-only anchor: caught up at next start


def test_a_bad_line_that_is_not_the_last_is_not_a_crash(env):
    lines = env["log"].read_bytes().splitlines(keepends=True)
    env["log"].write_bytes(b"".join(lines[:-1]) + b'{"torn\n' + lines[-1])
    code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 1 and out["state"] == "edited"
    env["log"].write_bytes(b"".join(lines[:-1]) + b'{"torn')  # the head names record 5: it was complete
    assert verify_cli(env["log"], env["keyfile"], env["data"])[1]["state"] == "truncated"


# -- tampering without the key -------------------------------------------------------------------------
def _attack(e, name: str) -> None:
    log, head = e["log"], e["head"]
    if name == "drop-newest-and-rewrite-head":
        recs = records(log)
        log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:3]))
        head.write_text(json.dumps({"seq": 3, "hash": recs[2]["hash"], "mac": "f" * 64}))
    elif name == "delete-both":
        log.unlink()
        head.unlink()
    elif name == "empty-the-log":
        log.write_bytes(b"")
    elif name == "roll-both-back":
        old = e["old"]
        shutil.copy(old / "audit.log", log)
        shutil.copy(old / "audit.log.head", head)
    elif name == "edit-head":
        h = json.loads(head.read_text())
        h["seq"] -= 1
        head.write_text(json.dumps(h))
    elif name == "drop-newest-and-unsigned-head":
        recs = records(log)
        log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:3]))
        head.write_text(json.dumps({"seq": 3, "hash": recs[2]["hash"]}))


ATTACKS = {  # attack -> the state verify names
    "drop-newest-and-rewrite-head": "bad-mac",
    "drop-newest-and-unsigned-head": "bad-mac",
    "delete-both": "missing",
    "empty-the-log": "truncated",
    "roll-both-back": "rolled-back",
    "edit-head": "bad-mac",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_tampering_without_the_key_is_detected(env, attack):
    if attack == "roll-both-back":  # an older copy of both files, then more records appended
        env["old"] = env["tmp"] / "old"
        env["old"].mkdir()
        shutil.copy(env["log"], env["old"] / "audit.log")
        shutil.copy(env["head"], env["old"] / "audit.log.head")
        audit, store, report = reopen(env)
        audit.append("inv", "Match", {"n": 9}, "accepted", [9])
        audit.close()
        store.close()
    _attack(env, attack)
    code, out, err = verify_cli(env["log"], env["keyfile"], env["data"])
    assert code == 1 and out["state"] == ATTACKS[attack] and not out["ok"], (out, err)
    assert f"NOT intact ({ATTACKS[attack]})" in err
    # the server's own start: not repaired, kept refused; no file is created for a missing log
    audit, store, report = reopen(env)
    try:
        assert report.state == ATTACKS[attack] and not audit.ok
        with pytest.raises(FailedPrecondition, match=ATTACKS[attack]):
            audit.append("inv", "Match", {}, "accepted")
    finally:
        audit.close()
        store.close()
    if attack == "delete-both":
        assert not env["log"].exists() and not env["head"].exists()
    assert verify_cli(env["log"], env["keyfile"], env["data"])[1]["state"] == ATTACKS[attack]  # unchanged


def test_without_the_anchor_a_rollback_of_both_files_looks_intact_so_verify_says_it_did_not_check(env):
    """Why the anchor lives outside the log's directory: log + head alone cannot tell an older copy."""
    old = env["tmp"] / "old"
    old.mkdir()
    shutil.copy(env["log"], old / "audit.log")
    shutil.copy(env["head"], old / "audit.log.head")
    audit, store, _ = reopen(env)
    audit.append("inv", "Match", {}, "accepted")
    audit.close()
    store.close()
    shutil.copy(old / "audit.log", env["log"])
    shutil.copy(old / "audit.log.head", env["head"])
    code, out, _ = verify_cli(env["log"], env["keyfile"])
    assert code == 0 and "not checked" in out["anchor"]
    assert verify_cli(env["log"], env["keyfile"], env["data"])[1]["state"] == "rolled-back"


def test_edited_reordered_removed_records_and_a_forged_anchor(env):
    lines = env["log"].read_bytes().splitlines(keepends=True)
    cases = {
        "edited": lines[:2] + [lines[2].replace(b'"inv"', b'"eve"')] + lines[3:],
        "removed": lines[:2] + lines[3:],
        "reordered": lines[:2] + [lines[3], lines[2]] + lines[4:],
    }
    for state, content in cases.items():
        env["log"].write_bytes(b"".join(content))
        code, out, _ = verify_cli(env["log"], env["keyfile"], env["data"])
        assert code == 1 and out["state"] == state, (state, out)
    env["log"].write_bytes(b"".join(lines))
    with KeyStore.open(env["data"] / "lmdb", StoreConfig(map_size=1 << 26)) as store:
        store.put_setting(A.ANCHOR_SETTING, json.dumps({"seq": 2, "hash": "0" * 64, "mac": "0" * 64}).encode())
    assert verify_cli(env["log"], env["keyfile"], env["data"])[1]["state"] == "bad-mac"
    (env["tmp"] / "other.key").write_bytes(b"x" * 32)
    p = fk("audit", "verify", "--log", env["log"], "--key-file", env["tmp"] / "other.key", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["state"] == "bad-mac"  # another key: the head fails first


def test_a_write_that_fails_midway_leaves_no_partial_line(tmp_path):
    """A failed append (here: the file size limit, EFBIG after a partial write) is cut back off, so the next
    record does not follow garbage."""
    log = tmp_path / "a" / "audit.log"
    audit = AuditLog(log, KEY)
    audit.append("a", "X", {})
    size = log.stat().st_size
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, limits[1]))
    try:
        with pytest.raises(Unavailable, match="audit log write failed"):
            audit.append("a", "X", {"pad": "x" * 200})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert log.stat().st_size == size and audit.ok
    audit.append("a", "X", {})
    audit.close()
    assert A.verify(log, KEY).ok and A.verify(log, KEY).records == 2


def test_a_head_of_the_older_mac_less_format_is_upgraded_only_where_no_anchor_exists_yet(tmp_path):
    log = tmp_path / "audit" / "audit.log"
    audit = AuditLog(log, KEY)
    for i in range(3):
        audit.append("root", "CredentialIssue", {"n": i}, "issued")
    audit.close()
    head = A.head_path_of(log)
    h = json.loads(head.read_text())
    head.write_text(json.dumps({"seq": h["seq"], "hash": h["hash"]}))  # as the older version wrote it
    assert A.verify(log, KEY).state == "bad-mac"
    with KeyStore.open(tmp_path / "data" / "lmdb", StoreConfig(map_size=1 << 26)) as store:
        audit = AuditLog(log, KEY)
        report = audit.recover(StoreAnchor(store))
        audit.close()
    assert report.ok and report.repaired == "upgraded-head"
    assert [r["decision"] for r in records(log)][-2:] == ["upgraded-head", "anchored"]
    assert A.verify(log, KEY).ok


# -- the server: refuses what must be audited, keeps enrolling, reports it; refusals are audited ------------
def _server(tmp_path, data, log, keyfile, creds=None):
    sec = SecurityConfig(audit_log=log, audit_key_file=keyfile, credentials_file=creds)
    return KeyStoreServer(ServerConfig(data_dir=data, port=0, metrics_port=0, store=StoreConfig(map_size=1 << 27),
                                       security=sec)).start()


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _metric(srv, name: str) -> str:
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read().decode()
    return [line for line in text.splitlines() if line.startswith(name + " ")][0]


def test_a_tampered_log_stops_audited_calls_not_enrolment_and_says_so(tmp_path):
    keyfile, data, log = tmp_path / "audit.key", tmp_path / "data", tmp_path / "audit" / "audit.log"
    keyfile.write_bytes(KEY)
    x = random_keys(3, seed=5)
    srv = _server(tmp_path, data, log, keyfile)
    try:
        assert _health(srv.address, "facekeys.audit") == health_pb2.HealthCheckResponse.SERVING
        assert _metric(srv, "facekeys_audit_ok") == "facekeys_audit_ok 1.0"
        with Client(srv.address, timeout=10) as c:
            c.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
            c.match(x[0], "enc")
            c.match(x[1], "enc")
    finally:
        srv.stop(grace=0)
    old = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(old[:-1]))  # drop the newest record, keep the head
    srv = _server(tmp_path, data, log, keyfile)
    try:
        assert _health(srv.address, "facekeys.audit") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(srv.address, "") == health_pb2.HealthCheckResponse.SERVING  # enrolment goes on
        assert _metric(srv, "facekeys_audit_ok") == "facekeys_audit_ok 0.0"
        with Client(srv.address, timeout=10) as c:
            assert len(c.enroll([NewKey(x[0], "enc", "later")])) == 1
            for call in (lambda: c.match(x[0], "enc"), lambda: c.get(1, include_latent=True),
                         lambda: c.delete_key(1)):
                with pytest.raises(FailedPrecondition, match="truncated"):
                    call()
            assert c.stats().keys == 4 and c.get(1).key_id == 1  # records without latents are not audited
    finally:
        srv.stop(grace=0)


def test_denied_and_invalid_calls_are_audited(tmp_path):
    keyfile, data, log = tmp_path / "audit.key", tmp_path / "data", tmp_path / "audit" / "audit.log"
    keyfile.write_bytes(KEY)
    creds = CredentialStore(tmp_path / "creds.json")
    tokens = {name: creds.issue(name, [role])[1] for name, role in
              (("gw", "gateway"), ("inv", "investigator"), ("ops", "admin"))}
    srv = _server(tmp_path, data, log, keyfile, creds=tmp_path / "creds.json")
    x = random_keys(2, seed=6)
    try:
        with Client(srv.address, token=tokens["gw"], timeout=10) as gw:
            gw.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
            with pytest.raises(PermissionDenied):
                gw.match(x[0], "enc")
        with Client(srv.address, token="fk_not-a-real-token", timeout=10) as bad, pytest.raises(Unauthenticated):
            bad.match(x[0], "enc")
        with Client(srv.address, timeout=10) as anon, pytest.raises(Unauthenticated):
            anon.stats()
        with Client(srv.address, token=tokens["inv"], timeout=10) as inv:
            with pytest.raises(InvalidArgument):
                inv.match(x[0], "enc", top_k=10 ** 6)
            with pytest.raises(NotFound):
                inv.match(x[0], "no-such-encoder")
        with Client(srv.address, token=tokens["ops"], timeout=10) as ops, pytest.raises(NotFound):
            ops.delete_identity("nobody")
    finally:
        srv.stop(grace=0)
    recs = [r for r in records(log) if r["action"] != "AuditAnchor"]
    got = [(r["who"], r["action"], r["decision"], r["what"].get("code")) for r in recs]
    assert got == [
        ("gw", "Match", "denied", "PERMISSION_DENIED"),
        ("anonymous", "Match", "denied", "UNAUTHENTICATED"),
        ("anonymous", "Stats", "denied", "UNAUTHENTICATED"),
        ("inv", "Match", "invalid", "INVALID_ARGUMENT"),
        ("inv", "Match", "invalid", "NOT_FOUND"),
        ("ops", "Delete", "invalid", "NOT_FOUND"),
    ], got
    assert all(r["what"]["reason"] for r in recs)
    assert "fk_not-a-real-token" not in log.read_text()  # a token is never recorded
    assert max(len(line) for line in log.read_text().splitlines()) < 1500  # never a latent
    assert A.verify(log, KEY).ok


# -- kill -9 of a real server under Match load -----------------------------------------------------------
def _match_load(address: str, probe, stop: threading.Event, answered: list) -> None:
    try:
        with Client(address, timeout=5) as c:
            while not stop.is_set():
                c.match(probe, "enc", top_k=1)
                answered.append(1)
    except FacekeysError:
        pass  # the server died under it


@pytest.mark.slow
def test_kill_9_under_match_load_always_restarts_and_the_log_verifies(tmp_path):
    keyfile, data, log = tmp_path / "audit.key", tmp_path / "data", tmp_path / "audit" / "audit.log"
    keyfile.write_bytes(KEY)
    args = ("--audit-log", log, "--audit-key-file", keyfile)
    x = random_keys(2, seed=7)
    proc, address = start_server(data, *args)
    with Client(address, timeout=10) as c:
        c.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
    answered_total, seen = 0, []
    try:
        for trial in range(4):
            stop, answered = threading.Event(), []
            threads = [threading.Thread(target=_match_load, args=(address, x[0], stop, answered)) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.4 + 0.13 * trial)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            for t in threads:
                t.join(timeout=10)
            answered_total += len(answered)
            code, out, _ = verify_cli(log, keyfile, data)
            assert out["ok"], out  # ok or a crash state: never tampering
            seen.append(out["state"])
            proc, address = start_server(data, *args)  # raises if it does not start
            code, out, _ = verify_cli(log, keyfile, data)
            assert code == 0 and out["state"] == "ok", out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    matches = sum(1 for r in records(log) if r["action"] == "Match")
    assert answered_total > 0 and matches >= answered_total  # every answered Match has its record
    recovered = [r["decision"] for r in records(log) if r["action"] == "AuditRecovery"]
    assert recovered == [s for s in seen if s != "ok"], (recovered, seen)
