#!/usr/bin/env python3
"""Create every secret a secured facekeys deployment needs, in one folder (never in git).

    facekeys-bootstrap --dir OUT [--keystore-name DNS ...] [--recovery-name DNS ...] [--client NAME:ROLE ...]

In the key store image this is /usr/local/bin/facekeys-bootstrap (deploy/up.sh runs it in a one-shot
container); anywhere facekeys[server] is installed it is `python deploy/bootstrap_secrets.py`. It only
calls the public CLI (`facekeys secrets init`, `facekeys creds issue`) plus a throwaway private CA made
with `cryptography`. Layout (file names = the keys of the Kubernetes Secrets, and the file names under
/run/secrets/facekeys/ in the containers):

  OUT/ca/ca.crt, ca.key            deployment CA (keep ca.key OFFLINE; it signs the service certificates)
  OUT/keystore/                    -> Secret facekeys-keystore-secrets, mounted at /run/secrets/facekeys
      tls.crt tls.key ca.crt       server certificate (SANs: --keystore-name), CA
      credentials.json             client credentials (token hashes + roles)
      audit.key transform.secret master.key grant.key grant.pub   (`facekeys secrets init`)
  OUT/recovery/                    -> Secret facekeys-recovery-secrets, mounted at /run/secrets/facekeys
      tls.crt tls.key ca.crt       its own server certificate (SANs: --recovery-name), CA (also for the key store)
      credentials.json             revealer credentials (callers of Recover/Reveal)
      audit.key                    HMAC key of the recovery service's own audit log
      keystore.token               its `recovery` credential at the key store (Get)
      grant.pub transform.secret   copies: verifies reveal grants; inverts the key transform
  OUT/clients/ca.crt, <name>.token one token per --client (shown nowhere else: hand each to its client)
  OUT/credentials-audit.log(.head), OUT/recovery-credentials-audit.log(.head)
                                   audit records of the credentials issued here (`facekeys audit verify`);
                                   keep them with OUT and pass them to later `facekeys creds issue|revoke`

Refuses to overwrite anything that exists (`facekeys secrets init` semantics). Prints a JSON summary
(no secret values) on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

KEYSTORE_NAMES = ["facekeys-keystore", "facekeys-keystore.facekeys.svc", "facekeys-keystore.facekeys.svc.cluster.local",
                  "keystore", "localhost", "127.0.0.1"]
RECOVERY_NAMES = ["facekeys-recovery", "facekeys-recovery.facekeys.svc", "facekeys-recovery.facekeys.svc.cluster.local",
                  "recovery", "localhost", "127.0.0.1"]
CLIENTS = ["gateway:gateway", "investigator:investigator", "admin:admin", "revealer:revealer"]
RECOVERY_SERVICE_CREDENTIAL = "recovery-service"  # role `recovery` at the key store


class BootstrapError(Exception):
    pass


def facekeys(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "facekeys.cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise BootstrapError(f"facekeys {' '.join(map(str, args[:2]))} failed: {r.stderr.strip()}")
    return r.stdout


def _private(path: Path, data: bytes) -> None:
    if path.exists():
        raise BootstrapError(f"{path} exists; refusing to overwrite a secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _public(path: Path, data: bytes) -> None:
    if path.exists():
        raise BootstrapError(f"{path} exists; refusing to overwrite it")
    path.write_bytes(data)
    os.chmod(path, 0o644)


def make_ca(d: Path, days: int):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "facekeys deployment CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    _private(d / "ca.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    _public(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue_server_cert(ca_key, ca_cert, names: list[str], d: Path, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _private(d / "tls.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    _public(d / "tls.crt", cert.public_bytes(serialization.Encoding.PEM))
    _public(d / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))


def issue(creds: Path, log: Path, key: Path, name: str, role: str) -> str:
    out = facekeys("creds", "issue", "--file", creds, "--name", name, "--role", role, "--audit-log", log,
                   "--audit-key-file", key, "--operator", "facekeys-bootstrap")
    return json.loads(out)["token"]


def bootstrap(out: Path, keystore_names: list[str], recovery_names: list[str], clients: list[str],
              days: int = 825) -> dict:
    out = Path(out)
    ks, rc, cl = out / "keystore", out / "recovery", out / "clients"
    for d in (ks, rc, cl, out / "ca"):
        if d.exists() and any(d.iterdir()):
            raise BootstrapError(f"{d} is not empty; bootstrap makes a new deployment's secrets only "
                                 "(see deploy/README.md for rotating one secret)")
    parsed = []
    for c in clients:
        name, _, role = c.partition(":")
        if not name or role not in ("gateway", "investigator", "revealer", "admin"):
            raise BootstrapError(f"--client {c!r}: want NAME:ROLE, ROLE one of gateway, investigator, revealer, admin")
        parsed.append((name, role))
    os.umask(0o077)
    for d in (ks, rc, cl):
        d.mkdir(parents=True, exist_ok=True)
    facekeys("secrets", "init", "--dir", ks)
    ca_key, ca_cert = make_ca(out / "ca", days)
    issue_server_cert(ca_key, ca_cert, keystore_names, ks, days)
    issue_server_cert(ca_key, ca_cert, recovery_names, rc, days)
    _public(cl / "ca.crt", (out / "ca" / "ca.crt").read_bytes())
    for name in ("grant.pub", "transform.secret"):
        shutil.copy2(ks / name, rc / name)
    _private(rc / "audit.key", (secrets.token_hex(32) + "\n").encode())

    ks_log, rc_log = out / "credentials-audit.log", out / "recovery-credentials-audit.log"
    tokens = {}
    _private(rc / "keystore.token", (issue(ks / "credentials.json", ks_log, ks / "audit.key",
                                           RECOVERY_SERVICE_CREDENTIAL, "recovery") + "\n").encode())
    for name, role in parsed:
        if role == "revealer":  # callers of the recovery service hold credentials there
            token = issue(rc / "credentials.json", rc_log, rc / "audit.key", name, role)
        else:
            token = issue(ks / "credentials.json", ks_log, ks / "audit.key", name, role)
        _private(cl / f"{name}.token", (token + "\n").encode())
        tokens[name] = role
    if not (rc / "credentials.json").exists():  # no revealer asked for: the service still needs the file
        _private(rc / "credentials.json", (json.dumps({"credentials": []}) + "\n").encode())
    return {"dir": str(out), "keystore": sorted(p.name for p in ks.iterdir()),
            "recovery": sorted(p.name for p in rc.iterdir()), "clients": tokens,
            "keystore_names": keystore_names, "recovery_names": recovery_names,
            "next": "move ca/ca.key offline; hand clients/<name>.token and clients/ca.crt to each client"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="facekeys-bootstrap", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, type=Path, help="output folder (created; must not hold secrets yet)")
    ap.add_argument("--keystore-name", action="append",
                    help=f"DNS name or IP in the key store certificate (repeatable; default {' '.join(KEYSTORE_NAMES)})")
    ap.add_argument("--recovery-name", action="append",
                    help=f"DNS name or IP in the recovery certificate (repeatable; default {' '.join(RECOVERY_NAMES)})")
    ap.add_argument("--client", action="append",
                    help=f"NAME:ROLE credential to issue (repeatable; default {' '.join(CLIENTS)})")
    ap.add_argument("--days", type=int, default=825, help="certificate lifetime")
    args = ap.parse_args(argv)
    try:
        summary = bootstrap(args.dir, args.keystore_name or KEYSTORE_NAMES, args.recovery_name or RECOVERY_NAMES,
                            args.client or CLIENTS, args.days)
    except (BootstrapError, OSError, ValueError) as e:
        print(f"facekeys-bootstrap: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
