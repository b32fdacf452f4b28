"""The container entrypoint (config file + environment + secret files -> `facekeys serve` flags) and
the gRPC health probe, run as real processes against a real key store on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deploytools import DEPLOY, free_port

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


def health(address, *extra, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, HEALTH, *([address] if address else []), "--timeout", "2", *extra],
                          capture_output=True, text=True, timeout=60, env=env)


def test_entrypoint_runs_the_key_store_and_the_probe_sees_it(tmp_path):
    """exec into a real `facekeys serve`, probe it with the HEALTHCHECK script, stop it with SIGTERM."""
    port, mport = free_port(), free_port()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nhost = "127.0.0.1"\nport = {port}\n'
                   f'metrics_port = {mport}\nmap_size = "256M"\nworkers = 2\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEKEYS_")}
    env["FACEKEYS_CONFIG"] = str(cfg)
    proc = subprocess.Popen([sys.executable, ENTRYPOINT, "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            r = health(None, env=env)  # address from the same config file the entrypoint read
            if r.returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"never healthy: {r.stdout} {r.stderr}"
            time.sleep(0.3)
        assert f"127.0.0.1:{port}" in r.stdout and "SERVING" in r.stdout
        assert health(f"127.0.0.1:{port}", "--service", "facekeys.v1.KeyStore").returncode == 0
        r = health(f"127.0.0.1:{port}", "--service", "no.such.Service")
        assert r.returncode == 1 and "NOT_FOUND" in r.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert (tmp_path / "data" / "lmdb" / "data.mdb").is_file()
    r = health(f"127.0.0.1:{port}")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stdout
