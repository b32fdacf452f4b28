#!/usr/bin/env python3
"""gRPC health probe (standard grpc.health.v1.Health/Check) for container HEALTHCHECKs.

    facekeys-health [ADDRESS] [--service NAME] [--timeout SECONDS]

Exit 0 when the service answers SERVING, 1 otherwise (NOT_SERVING, SERVICE_UNKNOWN, unreachable,
timeout). ADDRESS defaults to $FACEKEYS_HEALTH_ADDR, else 127.0.0.1:<port>, where the port is the one
the entrypoint would pass (config file / FACEKEYS_PORT, see entrypoint.py), else the command's default.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_PORTS = {"serve": 50051, "recover-serve": 50052}


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


def default_address(env=os.environ) -> str:
    if env.get("FACEKEYS_HEALTH_ADDR"):
        return env["FACEKEYS_HEALTH_ADDR"]
    command = env.get("FACEKEYS_HEALTH_COMMAND", "serve")
    port = str(DEFAULT_PORTS.get(command, 50051))
    try:
        port = _entrypoint().settings(command, env).get("--port") or port  # same resolution as the entrypoint
    except Exception:  # noqa: BLE001 -- a probe must answer, not crash: fall back to the default port
        pass
    return f"127.0.0.1:{port}"


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
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
    args = ap.parse_args(argv)
    address = args.address or default_address()
    ok, status = check(address, args.service, args.timeout)
    print(f"{address} {args.service or '<server>'}: {status}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
