"""Build hook: generate the protobuf/gRPC modules from proto/ (never hand-edited, never committed), and
build the optional C extensions `facekeys.store._f16dot` and `facekeys.store._lmdbwalk`.

`pyproject.toml` holds all metadata; this file runs grpcio-tools' protoc over
`proto/facekeys/v1/*.proto` into `client/facekeys/v1/`. It runs whenever setuptools loads this file
(metadata, wheel, sdist, editable install), since setuptools checks that every mapped package folder
exists before any build command runs. An sdist ships the generated files and no proto/ step reruns.

`_f16dot` (server/facekeys/store/_f16dot.c: exact multi-layer dot products over float16 or float32 rows at
memory bandwidth, for the float16 scans and the float32 one-probe scan) is optional: without a C compiler or
Python headers the install still succeeds, with a warning, and the stores fall back to numpy + FAISS kernels
(`facekeys.store.ann.F16_KERNEL`, `facekeys.store.vectors.F32_KERNEL` say which). `_lmdbwalk`
(server/facekeys/store/_lmdbwalk.c: the B-tree search that places LMDB values in the data file) is optional too:
`facekeys.store.lmdb_pages` has the same walk in Python.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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


class OptionalBuildExt(build_ext):
    """A failed C build warns and installs the pure-Python package (the extension is `optional`, and anything
    that escapes that, e.g. no usable compiler at all, is caught here too)."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - the kernel is an accelerator, never a requirement
            self.warn(f"facekeys: optional C extensions not built ({e}); their Python fallbacks are used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self.warn(f"facekeys: optional extension {ext.name} not built ({e}); its Python fallback is used")


F16DOT = Extension(
    "facekeys.store._f16dot",
    sources=["server/facekeys/store/_f16dot.c"],
    extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-std=c11"],
    libraries=[] if sys.platform == "win32" else ["m"],  # sqrtf
    optional=True,
)

LMDBWALK = Extension(
    "facekeys.store._lmdbwalk",
    sources=["server/facekeys/store/_lmdbwalk.c"],
    extra_compile_args=[] if sys.platform == "win32" else ["-O2", "-std=c11"],
    optional=True,
)

if PROTO_ROOT.is_dir():
    generate_protos()
setup(ext_modules=[F16DOT, LMDBWALK], cmdclass={"build_ext": OptionalBuildExt})
