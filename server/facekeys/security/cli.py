"""`facekeys creds|audit|secrets ...`: credentials, the audit log, and deployment secrets."""

from __future__ import annotations

import argparse
import json
import os
import secrets as pysecrets
import sys
from pathlib import Path

from facekeys.errors import FailedPrecondition, InvalidArgument

from . import audit as audit_mod
from .audit import AuditLog, StoreAnchorReader
from .credentials import ROLES, CredentialStore
from .grants import generate_keypair
from .transform import KeyTransform, load_secret


def _audit_log(args) -> AuditLog:
    log = AuditLog(Path(args.audit_log), load_secret(args.audit_key_file))
    log.check()  # verified (a crash state repaired and recorded) before anything changes; tampered: refused
    return log


def cmd_creds_issue(args) -> int:
    log = _audit_log(args)  # opened (and verified) first: no credential change goes unaudited
    cred, token = CredentialStore(Path(args.file)).issue(args.name, args.role)
    log.append(args.operator, "CredentialIssue", {"id": cred.id, "name": cred.name, "roles": list(cred.roles)},
               "issued")
    print(json.dumps({"id": cred.id, "name": cred.name, "roles": list(cred.roles), "token": token}))
    print("store the token now: it is not shown again", file=sys.stderr)
    return 0


def cmd_creds_revoke(args) -> int:
    log = _audit_log(args)
    cred = CredentialStore(Path(args.file)).revoke(args.id)
    log.append(args.operator, "CredentialRevoke", {"id": cred.id, "name": cred.name}, "revoked")
    print(json.dumps({"id": cred.id, "name": cred.name, "revoked": cred.revoked}))
    return 0


def cmd_creds_list(args) -> int:
    for c in CredentialStore(Path(args.file)).list():
        print(json.dumps({"id": c.id, "name": c.name, "roles": list(c.roles), "created": c.created,
                          "revoked": c.revoked}))
    return 0


def _anchor_reader(args) -> "StoreAnchorReader | None":
    return StoreAnchorReader(Path(args.data_dir) / "lmdb") if args.data_dir else None


def _verify_report(args) -> audit_mod.VerifyReport:
    key, anchor = load_secret(args.key_file), _anchor_reader(args)
    if getattr(args, "repair", False):
        log = AuditLog(Path(args.log), key)
        try:
            return log.recover(anchor, who=args.operator)
        finally:
            log.close()
    return audit_mod.verify_locked(Path(args.log), key, anchor)


def cmd_audit_verify(args) -> int:
    report = _verify_report(args)
    out = {"ok": report.intact, "state": report.state, "records": report.records}
    if report.repaired:
        out["repaired"] = report.repaired
    if report.problem:
        out["problem"] = report.problem
    if not args.data_dir:
        out["anchor"] = "not checked (give --data-dir: rollback and deletion are detected only against it)"
    else:
        out["anchor"] = report.anchor if report.anchor is not None else "none stored yet"
    print(json.dumps(out))
    if not report.intact:
        print(f"facekeys: error: audit log NOT intact ({report.state}) after {report.records} good records: "
              f"{report.problem}", file=sys.stderr)
        return 1
    if report.state != audit_mod.OK:
        print(f"facekeys: {report.state}: {report.problem}; the server repairs and records it when it starts "
              f"(or run `facekeys audit verify --repair`)", file=sys.stderr)
    return 0


def cmd_audit_export(args) -> int:
    report = _verify_report(args)
    if not report.intact:
        raise FailedPrecondition(f"audit log failed verification ({report.state}: {report.problem}); not exporting")
    out = open(args.out, "w") if args.out else sys.stdout
    try:
        if report.records:
            for _, rec in zip(range(report.records), audit_mod.read(Path(args.log))):  # a torn tail: not exported
                out.write(json.dumps(rec, sort_keys=True) + "\n")
    finally:
        if args.out:
            out.close()
    return 0


def _write_secret(path: Path, data: bytes) -> None:
    if path.exists():
        raise InvalidArgument(f"{path} exists; refusing to overwrite a secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def cmd_secrets_init(args) -> int:
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    _write_secret(d / "audit.key", pysecrets.token_hex(32).encode())
    _write_secret(d / "transform.secret", pysecrets.token_hex(32).encode())
    _write_secret(d / "master.key", pysecrets.token_hex(32).encode())
    if (d / "grant.key").exists():
        raise InvalidArgument(f"{d / 'grant.key'} exists; refusing to overwrite a secret")
    generate_keypair(d / "grant.key", d / "grant.pub")
    print(json.dumps({"dir": str(d), "files": ["audit.key", "transform.secret", "master.key", "grant.key",
                                                "grant.pub"]}))
    return 0


def cmd_rotate_transform(args) -> int:
    from facekeys.security.crypto import Keyring, LocalKeyProvider
    from facekeys.store import KeyStore, StoreConfig

    data = Path(args.data_dir)
    old = KeyTransform(load_secret(args.old_secret_file)) if args.old_secret_file else None
    new = KeyTransform(load_secret(args.new_secret_file)) if args.new_secret_file else None
    cipher = Keyring(data / "keyring", LocalKeyProvider.from_file(args.master_key_file)) if args.master_key_file else None
    config = StoreConfig(map_size=args.map_size)
    try:
        store = KeyStore.open(data / "lmdb", config, cipher=cipher, transform=old)
    except FailedPrecondition as e:
        if "resumed" not in str(e):
            raise
        store = KeyStore.open(data / "lmdb", config, cipher=cipher, transform=new, previous_transform=old)
        print(json.dumps({"resumed": True, "keys": store.stats().keys}))
        store.close()
        return 0
    with store:
        n = store.rotate_transform(new)
    print(json.dumps({"rewritten": n}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from facekeys.cli import parse_size

    p = argparse.ArgumentParser(prog="facekeys")
    sub = p.add_subparsers(dest="group", required=True)

    creds = sub.add_parser("creds", help="issue, revoke and list client credentials").add_subparsers(
        dest="cmd", required=True)
    for name, fn in (("issue", cmd_creds_issue), ("revoke", cmd_creds_revoke), ("list", cmd_creds_list)):
        c = creds.add_parser(name)
        c.add_argument("--file", required=True, help="credentials file (the server's --credentials-file)")
        if name != "list":
            c.add_argument("--audit-log", required=True)
            c.add_argument("--audit-key-file", required=True)
            c.add_argument("--operator", default=os.environ.get("USER", "operator"), help="who (for the audit log)")
        if name == "issue":
            c.add_argument("--name", required=True)
            c.add_argument("--role", action="append", choices=ROLES, required=True)
        if name == "revoke":
            c.add_argument("id")
        c.set_defaults(func=fn)

    au = sub.add_parser("audit", help="verify or export the audit log").add_subparsers(dest="cmd", required=True)
    for name, fn in (("verify", cmd_audit_verify), ("export", cmd_audit_export)):
        c = au.add_parser(name, description=(
            "Check every record's MAC, hash and chain, the head and (with --data-dir) the anchor. Prints one JSON "
            "line with the state: ok; recovered-from-crash or torn-tail (a crash state the server repairs at "
            "start, exit 0); truncated, rolled-back, missing, edited, reordered, removed, bad-mac (exit 1)."
            if name == "verify" else "Write the verified records as JSON lines."))
        c.add_argument("--log", required=True)
        c.add_argument("--key-file", required=True)
        c.add_argument("--data-dir", help="the server's --data-dir: check the log against the anchor in its key "
                                          "store (detects rollback and deletion; read-only, the server may run)")
        if name == "export":
            c.add_argument("--out")
        else:
            c.add_argument("--repair", action="store_true",
                           help="repair a crash state now (what the server does at start), recorded in the log")
            c.add_argument("--operator", default=os.environ.get("USER", "operator"), help="who (for the record)")
        c.set_defaults(func=fn)

    se = sub.add_parser("secrets", help="create deployment secrets; rotate the key transform").add_subparsers(
        dest="cmd", required=True)
    c = se.add_parser("init", help="write audit.key, transform.secret, master.key, grant.key/.pub into DIR")
    c.add_argument("--dir", required=True)
    c.set_defaults(func=cmd_secrets_init)
    c = se.add_parser("rotate-transform", help="re-transform every stored key (server stopped); resumable")
    c.add_argument("--data-dir", required=True)
    c.add_argument("--old-secret-file", help="current secret (omit if the store has no transform yet)")
    c.add_argument("--new-secret-file", help="new secret (omit to remove the transform)")
    c.add_argument("--master-key-file")
    c.add_argument("--map-size", type=parse_size, default=parse_size("64G"))
    c.set_defaults(func=cmd_rotate_transform)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
