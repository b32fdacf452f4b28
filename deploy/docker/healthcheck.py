#!/usr/bin/env python3
"""gRPC health probe (standard grpc.health.v1.Health/Check) for container HEALTHCHECKs.

    facekeys-health [ADDRESS] [--service NAME] [--timeout SECONDS] [--tls-ca PEM] [--tls-name NAME] [--plaintext]

Exit 0 when the service answers SERVING, 1 otherwise (NOT_SERVING, SERVICE_UNKNOWN, unreachable,
timeout, TLS failure). Without ADDRESS it probes what the entrypoint would configure (config file and
FACEKEYS_* environment, see entrypoint.py; $FACEKEYS_PROBE_COMMAND names the command, default serve):
  * a `health_port` (>= 0) is set: 127.0.0.1:<health_port> in plaintext. That listener serves only
    grpc.health.v1, which is why it needs no TLS and no token (and why Kubernetes gRPC probes use it);
  * else 127.0.0.1:<port>, over TLS if `tls_cert` is set. The CA is --tls-ca, else $FACEKEYS_PROBE_TLS_CA,
    else ca.crt beside the server certificate (deploy/bootstrap_secrets.py puts it there); the name
    checked is --tls-name, else $FACEKEYS_PROBE_TLS_NAME, else the certificate's first DNS name.
    Health is callable without a token; a server requiring client certificates (tls_client_ca) needs
    a health_port instead.
$FACEKEYS_PROBE_ADDR overrides the address (plaintext unless a CA is given).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

DEFAULT_PORTS = {"serve": 50051, "recover-serve": 50052}


@dataclass(frozen=True)
class Target:
    address: str
    tls_ca: Optional[str] = None  # PEM file: use TLS, trusting this CA
    tls_name: Optional[str] = None  # name the server certificate must carry (SNI / verification)


def _entrypoint():
    """entrypoint.py beside this file (in the images both live in /usr/local/bin without .py)."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("entrypoint.py", "facekeys-entrypoint"):
        path = os.path.join(here, name)
        if os.path.isfile(path):
            loader = importlib.machinery.SourceFileLoader("facekeys_entrypoint", path)
            spec = importlib.util.spec_from_loader("facekeys_entrypoint", loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            return module
    raise ImportError("entrypoint not found beside the health probe")


def _cert_dns_name(cert_file: str) -> Optional[str]:
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(open(cert_file, "rb").read())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        return names[0] if names else None
    except Exception:  # noqa: BLE001 -- no cryptography, no SAN, unreadable: let TLS use the address
        return None


def default_target(env=os.environ, tls_ca: Optional[str] = None, tls_name: Optional[str] = None) -> Target:
    tls_ca = tls_ca or env.get("FACEKEYS_PROBE_TLS_CA") or None
    tls_name = tls_name or env.get("FACEKEYS_PROBE_TLS_NAME") or None
    if env.get("FACEKEYS_PROBE_ADDR"):
        return Target(env["FACEKEYS_PROBE_ADDR"], tls_ca, tls_name)
    command = env.get("FACEKEYS_PROBE_COMMAND", "serve")
    try:
        s = _entrypoint().settings(command, env)  # the same resolution as the entrypoint
    except Exception:  # noqa: BLE001 -- a probe must answer, not crash: fall back to the default port
        s = {}
    health_port = s.get("--health-port")
    if health_port not in (None, "", "-1"):
        return Target(f"127.0.0.1:{health_port}")
    address = f"127.0.0.1:{s.get('--port') or DEFAULT_PORTS.get(command, 50051)}"
    cert = s.get("--tls-cert")
    if not cert:
        return Target(address, tls_ca, tls_name)
    if tls_ca is None:
        beside = os.path.join(os.path.dirname(cert), "ca.crt")
        tls_ca = beside if os.path.isfile(beside) else cert  # a self-signed certificate is its own CA
    return Target(address, tls_ca, tls_name or _cert_dns_name(cert))


def check(target: Target, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if target.tls_ca:
        try:
            ca = open(target.tls_ca, "rb").read()
        except OSError as e:
            return False, f"cannot read CA {target.tls_ca}: {e.strerror}"
        options = [("grpc.ssl_target_name_override", target.tls_name)] if target.tls_name else []
        channel = grpc.secure_channel(target.address, grpc.ssl_channel_credentials(root_certificates=ca), options)
    else:
        channel = grpc.insecure_channel(target.address)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            return False, f"{e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="facekeys-health", description=__doc__.splitlines()[0])
    ap.add_argument("address", nargs="?")
    ap.add_argument("--service", default="", help="service name ('' = the whole server)")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--tls-ca", help="CA certificate (PEM): probe over TLS")
    ap.add_argument("--tls-name", help="server name to verify (default: from the certificate or address)")
    ap.add_argument("--plaintext", action="store_true", help="no TLS, whatever the configuration says")
    args = ap.parse_args(argv)
    if args.address:
        target = Target(args.address, args.tls_ca, args.tls_name)
    else:
        target = default_target(tls_ca=args.tls_ca, tls_name=args.tls_name)
    if args.plaintext:
        target = Target(target.address)
    ok, status = check(target, args.service, args.timeout)
    print(f"{target.address}{' (tls)' if target.tls_ca else ''} {args.service or '<server>'}: {status}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
