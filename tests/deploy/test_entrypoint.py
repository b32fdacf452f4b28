"""The container entrypoint (config file + environment + secret files -> `facekeys serve` flags) and
the gRPC health probe, run as real processes against a real, secured key store (the shipped
deploy/config/serve.toml with secrets from facekeys-bootstrap) on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deploytools import DEPLOY, free_port, localize

ENTRYPOINT = DEPLOY / "docker" / "entrypoint.py"
HEALTH = DEPLOY / "docker" / "healthcheck.py"


def dry_run(args, env, tmp_path) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FACEKEYS_")}
    full.update(env, FACEKEYS_ENTRYPOINT_DRY_RUN="1")
    return subprocess.run([sys.executable, ENTRYPOINT, *args], env=full, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def test_file_then_env_then_secret_then_command_line(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('port = 6000\nmap_size = "1G"\nworkers = 2\nlog_level = "DEBUG"\n'
                   'encoder_checkpoint_file = "%s"\n' % (tmp_path / "ckpt-path"))
    (tmp_path / "ckpt-path").write_text("/models/psp_ffhq_encode.pt\n")
    r = dry_run(["serve", "--workers", "8"], {
        "FACEKEYS_CONFIG": str(cfg), "FACEKEYS_MAP_SIZE": "2G", "FACEKEYS_HOST": "127.0.0.1",
        # Kubernetes service links for a Service named facekeys-keystore: not settings.
        "FACEKEYS_KEYSTORE_SERVICE_HOST": "10.0.0.1", "FACEKEYS_KEYSTORE_PORT": "tcp://10.0.0.1:50051",
        "FACEKEYS_KEYSTORE_PORT_50051_TCP_ADDR": "10.0.0.1", "FACEKEYS_KEYSTORE_SERVICE_PORT_GRPC": "50051",
    }, tmp_path)
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout)
    from facekeys.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.port, args.map_size, args.workers, args.host, args.log_level) == (6000, 2 << 30, 8, "127.0.0.1", "DEBUG")
    # `serve` has no --encoder-checkpoint-file option, so the secret file's content is the value.
    assert args.encoder_checkpoint == "/models/psp_ffhq_encode.pt"


def test_unknown_setting_stops_the_container(tmp_path):
    r = dry_run(["serve"], {"FACEKEYS_MAPSIZE": "1G"}, tmp_path)
    assert r.returncode == 2 and "no option --mapsize" in r.stderr


def test_missing_secret_file_stops_the_container(tmp_path):
    r = dry_run(["serve"], {"FACEKEYS_ENCODER_CHECKPOINT_FILE": str(tmp_path / "nope")}, tmp_path)
    assert r.returncode == 2 and "secret file" in r.stderr


def test_delegated_commands_pass_settings_through(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text("port = 50052\nmetrics_port = 9101\nhalf = true\nnever = false\n")
    r = dry_run(["recover-serve"], {"FACEKEYS_CONFIG": str(cfg)}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["recover-serve", "--port", "50052", "--metrics-port", "9101", "--half"]


def test_file_keys_are_paths_not_contents(tmp_path):
    """Keys naming a `--*-file` option (credentials_file, audit_key_file, ...) pass the PATH: the secret
    never reaches the process list, and the server reads the file itself."""
    files = {}
    for key in ("credentials_file", "audit_key_file", "grant_key_file", "transform_secret_file", "master_key_file"):
        files[key] = tmp_path / key
        files[key].write_text("SECRET-CONTENT-" + key)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("".join(f'{k} = "{v}"\n' for k, v in files.items()) + f'audit_log = "{tmp_path / "a.log"}"\n')
    r = dry_run(["serve"], {"FACEKEYS_CONFIG": str(cfg), "FACEKEYS_HEALTH_PORT": "50060",
                            "FACEKEYS_TLS_CERT_FILE": str(files["credentials_file"])}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SECRET-CONTENT" not in r.stdout.replace("SECRET-CONTENT-credentials_file", "")  # only as a --tls-cert value
    from facekeys.cli import build_parser

    args = build_parser().parse_args(json.loads(r.stdout))
    assert args.credentials_file == str(files["credentials_file"])
    assert args.audit_key_file == str(files["audit_key_file"])
    assert args.grant_key_file == str(files["grant_key_file"])
    assert args.transform_secret_file == str(files["transform_secret_file"])
    assert args.master_key_file == str(files["master_key_file"])
    assert args.health_port == 50060  # FACEKEYS_HEALTH_* is a flag, not reserved for the probe
    # `serve` has no --tls-cert-file: there a *_FILE variable's content is the value
    assert args.tls_cert == "SECRET-CONTENT-credentials_file"


def test_missing_security_file_stops_the_container(tmp_path):
    r = dry_run(["serve"], {"FACEKEYS_MASTER_KEY_FILE": str(tmp_path / "nope.key")}, tmp_path)
    assert r.returncode == 2 and "--master-key-file does not exist" in r.stderr


def health(address, *extra, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, HEALTH, *([address] if address else []), "--timeout", "2", *extra],
                          capture_output=True, text=True, timeout=60, env=env)


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEKEYS_")}
    env.update(extra)
    return env


def test_probe_targets(tmp_path, deployment_secrets):
    sys.path.insert(0, str(DEPLOY / "docker"))
    import healthcheck

    ks = deployment_secrets / "keystore"
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'port = 7000\nhealth_port = 7001\ntls_cert = "{ks / "tls.crt"}"\n')
    assert healthcheck.default_target({"FACEKEYS_CONFIG": str(cfg)}) == healthcheck.Target("127.0.0.1:7001")
    # no health port: TLS to the gRPC port, CA beside the certificate, the certificate's first DNS name
    t = healthcheck.default_target({"FACEKEYS_CONFIG": str(cfg), "FACEKEYS_HEALTH_PORT": "-1"})
    assert t == healthcheck.Target("127.0.0.1:7000", str(ks / "ca.crt"), "facekeys-keystore")
    t = healthcheck.default_target({"FACEKEYS_CONFIG": str(cfg), "FACEKEYS_HEALTH_PORT": "-1",
                                    "FACEKEYS_PROBE_TLS_CA": "/x/ca.pem", "FACEKEYS_PROBE_TLS_NAME": "ks"})
    assert t == healthcheck.Target("127.0.0.1:7000", "/x/ca.pem", "ks")
    # the recovery service's shipped config (no health port yet): TLS to 50052
    rec = tmp_path / "recover-serve.toml"
    rec.write_text(localize((DEPLOY / "config" / "recover-serve.toml").read_text(), deployment_secrets / "recovery",
                            tmp_path / "data"))
    t = healthcheck.default_target({"FACEKEYS_CONFIG": str(rec), "FACEKEYS_PROBE_COMMAND": "recover-serve"})
    assert t == healthcheck.Target("127.0.0.1:50052", str(deployment_secrets / "recovery" / "ca.crt"),
                                   "facekeys-recovery")


def test_entrypoint_runs_the_secured_key_store(tmp_path, deployment_secrets):
    """exec the shipped serve.toml (TLS, credentials, audit, grants, transform, encryption at rest; paths
    moved to a temp dir) into a real `facekeys serve`; probe its health-only port with the HEALTHCHECK
    script; check TLS and token roles; stop it with SIGTERM; the audit log verifies."""
    from facekeys.client import Client
    from facekeys.errors import PermissionDenied, Unauthenticated
    from facekeys.records import NewKey

    from fkhelpers import random_keys

    ks, clients = deployment_secrets / "keystore", deployment_secrets / "clients"
    data = tmp_path / "data"
    port, mport, hport = free_port(), free_port(), free_port()
    text = localize((DEPLOY / "config" / "serve.toml").read_text(), ks, data)
    text = (text.replace("port = 50051", f"port = {port}").replace("metrics_port = 9100", f"metrics_port = {mport}")
            .replace("health_port = 50060", f"health_port = {hport}").replace('map_size = "64G"', 'map_size = "256M"')
            .replace("workers = 16", "workers = 2"))
    cfg = tmp_path / "serve.toml"
    cfg.write_text(text)
    env = _clean_env(FACEKEYS_CONFIG=str(cfg), FACEKEYS_HOST="127.0.0.1")  # the shipped 0.0.0.0: lint test
    proc = subprocess.Popen([sys.executable, ENTRYPOINT, "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ca = (ks / "ca.crt").read_bytes()
    token = {n: (clients / f"{n}.token").read_text().strip() for n in ("gateway", "investigator", "admin")}
    try:
        deadline = time.monotonic() + 60
        while True:
            r = health(None, env=env)  # address from the same config file the entrypoint read: health port
            if r.returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"never healthy: {r.stdout} {r.stderr}"
            time.sleep(0.3)
        assert f"127.0.0.1:{hport} <server>: SERVING" in r.stdout
        assert health(f"127.0.0.1:{hport}", "--service", "facekeys.v1.KeyStore").returncode == 0
        r = health(f"127.0.0.1:{hport}", "--service", "no.such.Service")
        assert r.returncode == 1 and "NOT_FOUND" in r.stdout
        # The gRPC port speaks only TLS: a plaintext probe fails, one with the CA (no token) succeeds.
        assert health(f"127.0.0.1:{port}").returncode == 1
        r = health(f"127.0.0.1:{port}", "--tls-ca", ks / "ca.crt", "--tls-name", "facekeys-keystore")
        assert r.returncode == 0 and "(tls)" in r.stdout, r.stdout
        # ... and so does the probe's own TLS fallback when a config has no health port
        nohealth = tmp_path / "nohealth.toml"
        nohealth.write_text(text.replace(f"health_port = {hport}", ""))
        r = health(None, env=_clean_env(FACEKEYS_CONFIG=str(nohealth)))
        assert r.returncode == 0 and f"127.0.0.1:{port} (tls)" in r.stdout, r.stdout

        lat = random_keys(4, seed=5)
        with Client(f"127.0.0.1:{port}", token=token["gateway"], tls_ca=ca) as c:
            c.enroll([NewKey(l, "enc", identity_id=f"p{i}") for i, l in enumerate(lat)])
            with pytest.raises(PermissionDenied):
                c.stats()  # gateway may only enrol
        with Client(f"127.0.0.1:{port}", tls_ca=ca) as c:
            with pytest.raises(Unauthenticated):
                c.stats()
        with Client(f"127.0.0.1:{port}", token=token["investigator"], tls_ca=ca) as c:
            r = c.match(lat[:1], "enc", layers="high:4", metric="cosine", top_k=1)
            assert r.results[0].accepted
        with Client(f"127.0.0.1:{port}", token=token["admin"], tls_ca=ca) as c:
            assert c.stats().keys == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert (data / "lmdb" / "data.mdb").is_file()
    assert (data / "keyring").is_file() and (data / "keyring").stat().st_size > 0  # encryption at rest is on
    r = subprocess.run([sys.executable, "-m", "facekeys.cli", "audit", "verify", "--log", data / "audit" / "audit.log",
                        "--key-file", ks / "audit.key"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["records"] >= 1, r.stdout + r.stderr
    r = health(f"127.0.0.1:{hport}")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stdout
