"""`facekeys serve` in a subprocess on a free loopback port, for benchmarks and tests that need a real server
process (one they can SIGKILL)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["start_serve"]

_BANNER = re.compile(r"listening on (\S+?)(,|$)")


def start_serve(data_dir: str | Path, *extra: str, map_size: str = "1G", timeout: float = 60.0
                ) -> tuple[subprocess.Popen, str]:
    """Start the server (no metrics port, warnings only, `extra` flags appended) and wait for its banner:
    (process, address). RuntimeError if it exits or prints no banner within `timeout` seconds (it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "facekeys.cli", "serve", "--data-dir", str(data_dir), "--port", "0",
         "--metrics-port", "-1", "--map-size", map_size, "--log-level", "WARNING", *map(str, extra)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _BANNER.search(proc.stdout.readline())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"facekeys serve did not start within {timeout:.0f} s (exit code {proc.returncode})")
