"""Helpers for the deployment tests (imported as `deploytools`): locate the external tools and deploy/.

A missing tool skips its test on a developer machine, but FAILS it when CI=true: CI must run every
check (`bash deploy/install-tools.sh` installs them all).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALL_HINT = "bash deploy/install-tools.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def find_tool(name: str) -> str | None:
    """On PATH, or in the scripts folder of the interpreter running the tests (pip-installed tools)."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        cand = Path(folder) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        msg = f"`{name}` is not installed (install with: {INSTALL_HINT})"
        if in_ci():
            pytest.fail(f"{msg}; CI=true, so this check is required", pytrace=False)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_yaml_docs(path: Path) -> list:
    yaml = pytest.importorskip("yaml") if not in_ci() else __import__("yaml")
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


SECRETS_MOUNT = "/run/secrets/facekeys/"


def bootstrap(out: Path) -> Path:
    """Run deploy/bootstrap_secrets.py (the image's facekeys-bootstrap) into `out`; returns `out`."""
    import subprocess

    r = subprocess.run([sys.executable, str(DEPLOY / "bootstrap_secrets.py"), "--dir", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def localize(toml_text: str, secrets_dir: Path, data_dir: Path) -> str:
    """A shipped config with its container paths (/run/secrets/facekeys/..., /data...) moved to local folders."""
    return (toml_text.replace(SECRETS_MOUNT, f"{secrets_dir}/")
            .replace('"/data"', f'"{data_dir}"').replace('"/data/', f'"{data_dir}/'))
