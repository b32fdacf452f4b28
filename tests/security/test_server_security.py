"""A fully secured key store on loopback: TLS, tokens and roles, mutual TLS, grants, audit trail."""

from __future__ import annotations

import http.client
import json
import resource
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from fkhelpers import make_tls, random_keys
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facekeys.client import Client
from facekeys.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from facekeys.records import NewKey
from facekeys.security.config import SecurityConfig
from facekeys.security.grants import GrantVerifier
from facekeys.server import KeyStoreServer, ServerConfig
from facekeys.store import StoreConfig


def fk(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "facekeys.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


REFUSED = (urllib.error.URLError, ConnectionError, http.client.HTTPException, ssl.SSLError)


def scrape(srv, ca, cert=None, key=None, scheme="https") -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    url = f"{scheme}://127.0.0.1:{srv.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5, context=ctx if scheme == "https" else None).read().decode()


@pytest.fixture
def secured(tmp_path):
    tls = make_tls(tmp_path / "tls", client_names=("mtls-investigator",))
    sec = tmp_path / "secrets"
    fk("secrets", "init", "--dir", sec)
    creds, audit = tmp_path / "credentials.json", tmp_path / "audit.log"
    tokens = {}
    for name, roles in [("gw", ["gateway"]), ("inv", ["investigator"]), ("ops", ["admin"]),
                        ("mtls-investigator", ["investigator"])]:
        out = fk("creds", "issue", "--file", creds, "--name", name, *[a for r in roles for a in ("--role", r)],
                 "--audit-log", audit, "--audit-key-file", sec / "audit.key", "--operator", "root").stdout
        tokens[name] = json.loads(out)["token"]
    security = SecurityConfig(
        tls_cert=tls["server_cert"], tls_key=tls["server_key"], tls_client_ca=None, credentials_file=creds,
        grant_key_file=sec / "grant.key", audit_log=audit, audit_key_file=sec / "audit.key",
        transform_secret_file=sec / "transform.secret", master_key_file=sec / "master.key")
    srv = KeyStoreServer(ServerConfig(data_dir=tmp_path / "data", port=0, metrics_port=0,
                                      store=StoreConfig(map_size=1 << 29), security=security)).start()
    ca = tls["ca"].read_bytes()

    def client(name=None, token=None):
        return Client(srv.address, token=token or (tokens[name] if name else None), tls_ca=ca, timeout=10)

    yield dict(srv=srv, client=client, tokens=tokens, sec=sec, audit=audit, creds=creds, tls=tls, tmp=tmp_path)
    srv.stop(grace=0)


def test_roles_and_credentials(secured):
    client, x = secured["client"], random_keys(4, seed=1)
    with client("gw") as gw:
        keys = gw.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(x)])
        with pytest.raises(PermissionDenied, match="investigator"):
            gw.match(x[0], "enc")
        with pytest.raises(PermissionDenied):
            gw.stats()
    with client("inv") as inv:
        r = inv.match(x[1] + 0.01, "enc", "all")
        assert r.results[0].hits[0].key_id == keys[1].key_id
        for call in (lambda: inv.enroll([NewKey(x[0], "enc")]), lambda: inv.delete_key(1),
                     lambda: inv.get(1, include_latent=True), lambda: inv.list_identities()):
            with pytest.raises(PermissionDenied):
                call()
    with client("ops") as ops:
        assert ops.stats().keys == 4
        assert ops.delete_identity("p3") == [4]
    for bad in (client(), client(token="fk_not-a-real-token")):
        with bad, pytest.raises(Unauthenticated):
            bad.stats()


def test_revocation_applies_to_the_running_server(secured):
    ids = [json.loads(line)["id"] for line in fk("creds", "list", "--file", secured["creds"]).stdout.splitlines()
           if json.loads(line)["name"] == "ops"]
    with secured["client"]("ops") as ops:
        ops.stats()
        fk("creds", "revoke", ids[0], "--file", secured["creds"], "--audit-log", secured["audit"],
           "--audit-key-file", secured["sec"] / "audit.key")
        with pytest.raises(Unauthenticated, match="revoked"):
            ops.stats()


def test_plaintext_client_cannot_talk_to_the_tls_server(secured):
    with Client(secured["srv"].address, timeout=3) as c, pytest.raises(Exception) as e:
        c.stats()
    assert e.value.code == "UNAVAILABLE"


def test_health_is_public(secured):
    ch = grpc.secure_channel(secured["srv"].address, grpc.ssl_channel_credentials(secured["tls"]["ca"].read_bytes()))
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="facekeys.v1.KeyStore"))
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    ch.close()


def test_match_grants_are_signed_for_the_requester(secured):
    x = random_keys(3, seed=2)
    with secured["client"]("gw") as gw:
        keys = gw.enroll([NewKey(x[0], "enc", "alice"), NewKey(x[0] + 0.01, "enc", "alice"), NewKey(x[2], "enc", "bob")])
    with secured["client"]("inv") as inv:
        result, grants = inv.match_with_grants(np.stack([x[0], -x[2]]), "enc", "all", "cosine", top_k=3)
    assert result.results[0].accepted and not result.results[1].accepted and grants[1] == b""
    verifier = GrantVerifier.from_file(secured["sec"] / "grant.pub")
    g = verifier.verify(grants[0], "inv", [keys[0].key_id, keys[1].key_id])
    assert set(g.key_ids) == {keys[0].key_id, keys[1].key_id} and g.identity_id == "alice"


def test_every_action_is_audited_and_tampering_is_detected(secured):
    x = random_keys(2, seed=3)
    with secured["client"]("gw") as gw:
        gw.enroll([NewKey(v, "enc", "dora") for v in x])
    with secured["client"]("inv") as inv:
        inv.match(x[0], "enc", "high:4", top_k=2)
    with secured["client"]("ops") as ops:
        ops.delete_identity("dora")
    log = secured["audit"]
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["action"], r["who"]) for r in recs] == [
        ("CredentialIssue", "root")] * 4 + [("AuditAnchor", "system"), ("Match", "inv"), ("Delete", "ops")]
    assert recs[5]["decision"] == "accepted" and recs[5]["ids"] == [1, 2] and recs[6]["ids"] == [1, 2]
    assert max(len(line) for line in log.read_text().splitlines()) < 1500  # ids and settings, never a latent
    key, data = secured["sec"] / "audit.key", secured["srv"].config.data_dir
    secured["srv"].security.audit.flush_anchor()  # the anchor trails the head by about one LMDB commit
    out = json.loads(fk("audit", "verify", "--log", log, "--key-file", key, "--data-dir", data).stdout)
    assert (out["ok"], out["state"], out["records"], out["anchor"]) == (True, "ok", 7, 7)
    lines = log.read_text().splitlines(keepends=True)
    tampered = {
        "edited": lines[:5] + [lines[5].replace('"inv"', '"eve"')] + lines[6:],
        "removed": lines[:3] + lines[4:],
        "reordered": lines[:3] + [lines[4], lines[3]] + lines[5:],
        "truncated": lines[:6],
    }
    original = log.read_text()
    for what, content in tampered.items():
        log.write_text("".join(content))
        p = fk("audit", "verify", "--log", log, "--key-file", key, "--data-dir", data, check=False)
        assert p.returncode == 1 and "NOT intact" in p.stderr and json.loads(p.stdout)["state"] == what, what
    log.write_text(original)
    exported = fk("audit", "export", "--log", log, "--key-file", key).stdout.splitlines()
    assert len(exported) == 7


def test_audit_write_failure_fails_the_call(secured):
    srv = secured["srv"]
    with secured["client"]("gw") as gw:
        gw.enroll([NewKey(random_keys(1)[0], "enc")])
    size = secured["audit"].stat().st_size
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, limits[1]))  # the next record cannot be written whole
    try:
        with secured["client"]("inv") as inv, pytest.raises(Unavailable, match="audit"):
            inv.match(random_keys(1)[0], "enc")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    text = scrape(srv, secured["tls"]["ca"])
    assert "facekeys_audit_write_failures_total 1.0" in text
    assert secured["audit"].stat().st_size == size  # the partial record was cut back off
    with secured["client"]("inv") as inv:
        inv.match(random_keys(1)[0], "enc")  # and the next call is audited normally
    out = json.loads(fk("audit", "verify", "--log", secured["audit"], "--key-file", secured["sec"] / "audit.key",
                        "--data-dir", srv.config.data_dir).stdout)
    assert out["state"] == "ok"


def test_metrics_of_a_tls_server_are_served_over_tls(secured):
    srv = secured["srv"]
    assert "facekeys_keys_stored" in scrape(srv, secured["tls"]["ca"])
    with pytest.raises(REFUSED):  # plain HTTP to the TLS endpoint: no answer
        scrape(srv, secured["tls"]["ca"], scheme="http")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # not our CA: refused
        urllib.request.urlopen(f"https://127.0.0.1:{srv.metrics_port}/metrics", timeout=5,
                               context=ssl.create_default_context())


def test_mutual_tls_identifies_the_client(tmp_path):
    tls = make_tls(tmp_path / "tls", client_names=("cam-gw-1", "stranger"))
    sec = tmp_path / "s"
    fk("secrets", "init", "--dir", sec)
    creds = tmp_path / "creds.json"
    fk("creds", "issue", "--file", creds, "--name", "cam-gw-1", "--role", "gateway", "--audit-log",
       tmp_path / "a.log", "--audit-key-file", sec / "audit.key")
    srv = KeyStoreServer(ServerConfig(
        data_dir=tmp_path / "d", port=0, metrics_port=0, store=StoreConfig(map_size=1 << 28),
        security=SecurityConfig(tls_cert=tls["server_cert"], tls_key=tls["server_key"], tls_client_ca=tls["ca"],
                                credentials_file=creds, audit_log=tmp_path / "a.log",
                                audit_key_file=sec / "audit.key"))).start()
    try:
        ca = tls["ca"].read_bytes()

        def client(name):
            return Client(srv.address, tls_ca=ca, client_cert=tls[f"{name}_cert"].read_bytes(),
                          client_key=tls[f"{name}_key"].read_bytes(), timeout=10)

        with client("cam-gw-1") as c:
            assert c.enroll([NewKey(random_keys(1)[0], "enc")])[0].key_id == 1
            with pytest.raises(PermissionDenied):
                c.stats()
        with client("stranger") as c, pytest.raises(Unauthenticated, match="stranger"):
            c.enroll([NewKey(random_keys(1)[0], "enc")])
        with Client(srv.address, tls_ca=ca, timeout=3) as c, pytest.raises(Exception):
            c.enroll([NewKey(random_keys(1)[0], "enc")])  # no client certificate: handshake refused
        # the metrics endpoint asks for a client certificate of the same CA too
        assert "facekeys_keys_stored 1.0" in scrape(srv, tls["ca"], tls["cam-gw-1_cert"], tls["cam-gw-1_key"])
        with pytest.raises(REFUSED):
            scrape(srv, tls["ca"])
    finally:
        srv.stop(grace=0)


def test_exposed_listener_needs_tls_and_credentials(tmp_path):
    with pytest.raises(InvalidArgument, match="refusing to listen"):
        ServerConfig(data_dir=tmp_path, host="0.0.0.0")
    ServerConfig(data_dir=tmp_path, host="0.0.0.0", security=SecurityConfig(insecure=True))
    with pytest.raises(InvalidArgument, match="audit"):
        SecurityConfig(credentials_file=tmp_path / "c.json").check("127.0.0.1")
    p = fk("serve", "--host", "0.0.0.0", "--port", 0, "--data-dir", tmp_path / "d", check=False)
    assert p.returncode == 1 and p.stderr.startswith("facekeys: error: refusing to listen")


def test_token_is_never_sent_in_clear_to_another_host():
    with pytest.raises(InvalidArgument, match="TLS"):
        Client("10.0.0.1:50051", token="fk_x")


def test_plaintext_health_port_serves_only_health(secured, tmp_path):
    base = secured["srv"].config
    from dataclasses import replace

    srv = KeyStoreServer(replace(base, data_dir=tmp_path / "d2", port=0, metrics_port=-1, health_port=0)).start()
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.health_port}")
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="facekeys.v1.KeyStore"),
                                                 timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        from facekeys.v1 import keystore_pb2, keystore_pb2_grpc
        with pytest.raises(grpc.RpcError) as e:
            keystore_pb2_grpc.KeyStoreStub(ch).Stats(keystore_pb2.StatsRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        ch.close()
    finally:
        srv.stop(grace=0)
