#!/usr/bin/env python3
"""Read requirements.lock (uv's pip-compatible output: `name==version \\` then `--hash=...` lines).

Standard library only, so it runs before anything is installed (scripts/setup.sh, the Dockerfiles):

    python scripts/locked.py pins                          # name==version, one a line
    python scripts/locked.py stanzas pip setuptools wheel  # those entries as a requirements file, hashes kept
    python scripts/locked.py without torch onnxruntime     # the lock less those entries (GPU images swap them)
    python scripts/locked.py unlocked                      # installed distributions the lock does not list

LOCK=path overrides the file (default: requirements.lock beside this folder).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

LOCK = Path(os.environ.get("LOCK", Path(__file__).resolve().parents[1] / "requirements.lock"))
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def stanzas(text: str) -> dict[str, tuple[str, str]]:
    """{canonical name: (version, the entry's lines)}: each entry with its hash and `# via` lines."""
    out: dict[str, tuple[str, str]] = {}
    name = None
    for line in text.splitlines(keepends=True):
        m = _ENTRY.match(line)
        if m:
            name = canonical(m[1])
            out[name] = (m[2], line)
        elif name is not None and line[:1].isspace():
            version, lines = out[name]
            out[name] = (version, lines + line)
        else:
            name = None  # header comments
    return out


def pins(text: str) -> dict[str, str]:
    """{canonical name: locked version}."""
    return {name: version for name, (version, _) in stanzas(text).items()}


def hashes(entry: str) -> list[str]:
    return re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)


def unlocked(locked: dict[str, str], ignore=("facekeys",)) -> list[str]:
    """Distributions installed in this interpreter's environment that the lock does not list."""
    import importlib.metadata as md

    names = {d.metadata["Name"] for d in md.distributions()}
    return sorted(n for n in names if canonical(n) not in locked and canonical(n) not in ignore)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("pins", "stanzas", "without", "unlocked"):
        print(__doc__, file=sys.stderr)
        return 2
    entries = stanzas(LOCK.read_text())
    cmd, names = argv[0], {canonical(n) for n in argv[1:]}
    if cmd == "pins":
        print("\n".join(f"{n}=={v}" for n, (v, _) in entries.items()))
    elif cmd == "unlocked":
        print(" ".join(unlocked({n: v for n, (v, _) in entries.items()})))
    else:
        missing = names - entries.keys()
        if missing:
            print(f"locked.py: not in {LOCK.name}: {' '.join(sorted(missing))}", file=sys.stderr)
            return 1
        keep = (lambda n: n in names) if cmd == "stanzas" else (lambda n: n not in names)
        sys.stdout.write("".join(lines for n, (_, lines) in entries.items() if keep(n)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
