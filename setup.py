"""Build hook: generate the protobuf/gRPC modules from proto/ (never hand-edited, never committed).

`pyproject.toml` holds all metadata; this file only runs grpcio-tools' protoc over
`proto/facekeys/v1/*.proto` into `client/facekeys/v1/`. It runs whenever setuptools loads this file
(metadata, wheel, sdist, editable install), since setuptools checks that every mapped package folder
exists before any build command runs. An sdist ships the generated files and no proto/ step reruns.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "client"  # facekeys/v1/*.proto -> client/facekeys/v1/*_pb2.py


def generate_protos() -> None:
    from grpc_tools import protoc  # build-time requirement, pinned to the runtime grpcio
    import grpc_tools

    protos = sorted(PROTO_ROOT.glob("facekeys/v1/*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}")
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(map(str, protos)))
    init = OUT_ROOT / "facekeys" / "v1" / "__init__.py"
    init.write_text('"""Generated from proto/facekeys/v1 by setup.py; do not edit."""\n')


if PROTO_ROOT.is_dir():
    generate_protos()
setup()
