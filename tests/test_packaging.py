"""Packaging: one `facekeys` namespace, generated protobuf code inside, a light client install."""

from __future__ import annotations

import subprocess
import sys
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
