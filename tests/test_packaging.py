"""Packaging: one `facekeys` namespace, generated protobuf code inside, a light client install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    [whl] = out.glob("facekeys-*.whl")
    return whl


def test_wheel_has_only_the_facekeys_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("facekeys-")}
    assert top == {"facekeys"}
    for module in ("facekeys/v1/keystore_pb2.py", "facekeys/v1/keystore_pb2_grpc.py", "facekeys/client/client.py",
                   "facekeys/store/keystore.py", "facekeys/server/app.py"):
        assert module in names


def _c_toolchain() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and Path(sysconfig.get_paths()["include"], "Python.h").exists()


def _f16dot_binaries(names):
    return [n for n in names if n.startswith("facekeys/store/_f16dot") and n.endswith((".so", ".pyd"))]


@pytest.mark.skipif(not _c_toolchain(), reason="no C compiler / Python headers: the optional kernel is skipped")
def test_wheel_has_the_c_kernel_where_a_compiler_exists(wheel):
    assert len(_f16dot_binaries(zipfile.ZipFile(wheel).namelist())) == 1


def test_wheel_builds_without_a_c_compiler(tmp_path):
    """The C kernel is optional: a failing compiler warns and the package installs without it."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info")  # no build/ either: a clean tree
    for item in ("proto", "client", "server", "indexer", "benchmarks/facekeys"):
        shutil.copytree(ROOT / item, src / item, ignore=skip)
    for item in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    out = tmp_path / "wheel"
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), LDSHARED=str(tmp_path / "no-such-cc") + " -shared")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out),
                        str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    [whl] = out.glob("facekeys-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert not _f16dot_binaries(names) and "facekeys/store/ann.py" in names
    assert "optional" in (p.stdout + p.stderr) and "not built" in (p.stdout + p.stderr)


def test_client_requires_only_grpc_protobuf_numpy(wheel):
    meta = zipfile.ZipFile(wheel).read(
        next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode()
    base = [line.split(" ", 1)[1] for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(b.split("=")[0].split("<")[0].split(">")[0] for b in base) == ["grpcio", "numpy", "protobuf"]


def test_client_imports_without_server_or_model_packages():
    blocked = "import sys\nfor m in ('faiss','lmdb','torch','prometheus_client','cv2','av','onnxruntime'):\n" \
              "    sys.modules[m] = None\n"
    code = blocked + "import facekeys, facekeys.client, facekeys.cli, facekeys.wire\nprint('ok')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    p = subprocess.run([sys.executable, "-c", blocked + "from facekeys.cli import main\n"
                        "raise SystemExit(main(['serve', '--port', '0']))"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "pip install 'facekeys[server]'" in p.stderr
